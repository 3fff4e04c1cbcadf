"""A diffusers pipeline of a pMF (``pip install 'pixel-meanflow[diffusers]'``): ``PixelMeanFlowPipeline`` with
a ``transformer`` (``PMFTransformer2DModel``, the network as a diffusers model) and diffusers' own flow-map
scheduler (``FlowMapEulerDiscreteScheduler``), whose time grid the pipeline steps on with pMF's one update
``pmf.sampling.flow_map_step`` (z_r = z_t - (t - r) u, spec section 4). It reads and writes the hub folder of
``pmf.checkpoints.hub`` (``pmf export --format hub``), and the standard diffusers layout too. Absolute imports
throughout, as in its first home ``pmf.diffusers``, whose name must not stand for the package."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pmf.checkpoints.metadata import ModelMetadata
from pmf.class_choice import class_of, name_index
from pmf.errors import PMFError
from pmf.extras import needs
from pmf.model_configs import ModelConfig

# 0.42: the first with the flow-map scheduler
with needs("diffusers", "pmf.export.diffusers_pipeline needs diffusers >= 0.42"):
    from diffusers import DiffusionPipeline, FlowMapEulerDiscreteScheduler, ImagePipelineOutput, ModelMixin
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_outputs import Transformer2DModelOutput
    from diffusers.utils.torch_utils import randn_tensor
from pmf.nn.model import PMFDiT, as_batch, u_head_only
from pmf.sampling import flow_map_step
from pmf.sampling_setting import SamplingSetting


class PMFTransformer2DModel(ModelMixin, ConfigMixin):
    """The u-head pmfDiT as a diffusers model: (z, h, omega, t_min, t_max, class_labels) -> x_u, the denoised
    image prediction [B, C, H, W]. Its config also records the fields of the model's ``ModelMetadata`` (sampling
    setting, class names, preset, weights, data)."""

    @register_to_config
    def __init__(self, model_config: dict, sampling_setting: dict | None = None, class_names: list | None = None,
                 preset: str | None = None, weights: dict | None = None, data: str | None = None):
        super().__init__()
        self.net = PMFDiT(ModelConfig.from_dict({**model_config, "v_head": False}))

    @property
    def meta(self) -> ModelMetadata:
        return ModelMetadata.from_dict(dict(self.config), self.net.config.num_classes)

    @property
    def setting(self) -> SamplingSetting:
        return self.meta.setting

    @classmethod
    def from_network(cls, model: PMFDiT, *, setting: SamplingSetting | None = None,
                     class_names: list[str] | None = None, preset: str | None = None,
                     meta: ModelMetadata | None = None) -> PMFTransformer2DModel:
        """``model``'s u-head with its record: ``meta`` (else ``model.metadata``, else resolved from the fields
        given), ``setting``, ``class_names`` and ``preset`` replacing its fields where given."""
        net = u_head_only(model)
        meta = meta or getattr(model, "metadata", None) or ModelMetadata.resolve(
            net.config.num_classes, setting=setting or SamplingSetting(), preset=preset, recorded=class_names)
        changes = {"setting": setting, "preset": preset, "class_names": class_names}
        meta = meta.replace(**{k: v for k, v in changes.items() if v is not None})
        out = cls(net.config.to_dict(), **meta.to_dict())
        out.net.load_state_dict(net.state_dict(), strict=True)
        return out.eval()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, omega: torch.Tensor, t_min: torch.Tensor,
                t_max: torch.Tensor, class_labels: torch.Tensor, return_dict: bool = True):
        """``timestep`` is the step length h = t - r [B] (t = 1, h = 1 for one step)."""
        x_u = self.net(sample, timestep, omega, t_min, t_max, class_labels, heads="u").x_u  # (B, C, H, W)
        return Transformer2DModelOutput(sample=x_u) if return_dict else (x_u,)


class PixelMeanFlowPipeline(DiffusionPipeline):
    """Class-conditional one- or few-step generation with a pMF, as DiTPipeline for DiT (no VAE: pixel space).

    ``pipe(class_labels=[3, 1, 4])`` samples at the model's setting; ``guidance_scale`` (omega) and
    ``guidance_interval`` ((t_min, t_max)) override it; ``latents`` is the noise as ``pmf.sampling.sample`` takes
    it (already times the model's noise scale)."""

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer: PMFTransformer2DModel, scheduler: FlowMapEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)
        # class name (and each comma-separated synonym) -> class index, as DiTPipeline; pmf.class_choice's rule
        self.labels = name_index(transformer.meta.class_names)

    def get_label_ids(self, label: int | str | list[int | str]) -> list[int]:
        """Class indices of class names (the names the model records; GET /info of pmf serve lists them too) or
        indices, by the rule of ``pmf.class_choice`` (the same as pmf sample's and pmf serve's)."""
        items = [label] if isinstance(label, (int, str)) else list(label)
        return [class_of(item, self.transformer.net.config.num_classes, self.labels) for item in items]

    @classmethod
    def from_network(cls, model: PMFDiT, **kwargs) -> PixelMeanFlowPipeline:
        """A pipeline of ``model`` (``kwargs``: meta, setting, class_names, preset)."""
        return cls(PMFTransformer2DModel.from_network(model, **kwargs), FlowMapEulerDiscreteScheduler())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> PixelMeanFlowPipeline:
        """A ``pmf.checkpoints.hub`` folder or hub repo (``pmf export --format hub``), else a diffusers-layout
        pipeline."""
        from pmf.checkpoints.hub import read_pretrained

        spec = str(pretrained_model_name_or_path)
        if _is_pmf_hub(spec, kwargs):
            pre = read_pretrained(spec, **{k: kwargs[k] for k in ("revision", "token", "cache_dir",
                                                                 "local_files_only") if k in kwargs})
            pipe = cls.from_network(pre.build(PMFDiT), meta=pre.meta)
            return pipe.to(kwargs["torch_dtype"]) if "torch_dtype" in kwargs else pipe
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, repo_id: str | None = None, **kwargs):
        """The ``pmf.checkpoints.hub`` folder (config.json, model.safetensors, model card) that ``from_pretrained``
        reads;
        ``push_to_hub`` uploads it to ``repo_id``. ``DiffusionPipeline.save_pretrained(pipe, DIR)`` writes the
        diffusers layout instead."""
        from pmf.checkpoints import hub

        fields = dict(meta=self.transformer.meta, **kwargs)
        if push_to_hub:
            return hub.push_to_hub(self.transformer.net, repo_id or Path(save_directory).name, **fields)
        return self.transformer.net.save_pretrained(save_directory, **fields)

    @torch.no_grad()
    def __call__(self, class_labels, num_inference_steps: int = 1, guidance_scale: float | None = None,
                 guidance_interval: tuple[float, float] | None = None, generator=None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True):
        """Images of ``class_labels`` (an index or a name, or a list of them: ``get_label_ids``) in
        ``num_inference_steps`` passes (spec section 4); ``None`` for guidance means the model's setting.
        ``output_type``: "pil", "np" ([B, H, W, C] in [0, 1]), "pt" ([B, C, H, W] in [0, 1])."""
        if output_type not in ("pil", "np", "pt"):
            raise PMFError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        t_min, t_max = (None, None) if guidance_interval is None else guidance_interval
        # the setting's own rule (pmf.sampling_setting) judges the values; None keeps the model's
        setting = self.transformer.setting.replace(omega=guidance_scale, t_min=t_min, t_max=t_max,
                                                   steps=num_inference_steps)
        omega, t_min, t_max = setting.omega, setting.t_min, setting.t_max
        net, device = self.transformer.net, self._execution_device
        cfg = net.config
        labels = torch.tensor(self.get_label_ids(class_labels), device=device)
        B = len(labels)
        if latents is None:
            latents = cfg.noise_scale * randn_tensor((B, cfg.in_channels, cfg.input_size, cfg.input_size),
                                                     generator=generator, device=device, dtype=torch.float32)
        z = latents.to(device=device, dtype=torch.float32)
        omega, t_min, t_max = (as_batch(v, B, device, n) for v, n in ((omega, "omega"), (t_min, "t_min"),
                                                                      (t_max, "t_max")))
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        sigmas = self.scheduler.sigmas.tolist()
        def denoise(*inputs):
            return self.transformer(*inputs).sample  # (B, C, H, W)

        for i, _ in enumerate(self.progress_bar(self.scheduler.timesteps)):
            # the scheduler's grid holds pmf.sampling.time_grid's values; the update is pMF's one step
            t, r = (torch.full((B,), v, device=device) for v in sigmas[i:i + 2])  # (B,) float32
            z = flow_map_step(denoise, z, t, r, omega, t_min, t_max, labels, setting.prediction)
        images = (z.clamp(-1, 1) + 1) / 2  # (B, C, H, W) in [0, 1]
        if output_type != "pt":
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def _is_pmf_hub(spec: str, kwargs: dict) -> bool:
    """Whether ``spec`` is a ``pmf.checkpoints.hub`` folder, or a hub repo whose config.json is one."""
    from pmf.checkpoints.hub import CONFIG_NAME, HUB_FORMAT, hub_repo_id, is_hub_folder

    if is_hub_folder(spec) or Path(spec).expanduser().exists():
        return is_hub_folder(spec)
    repo = hub_repo_id(spec)
    if repo is None:
        return False
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo, CONFIG_NAME, **{k: kwargs[k] for k in ("revision", "token", "cache_dir")
                                                     if k in kwargs})
        return json.loads(Path(path).read_text()).get("format") == HUB_FORMAT
    except Exception:  # no such file, or offline: let diffusers try its own layout and report
        return False
