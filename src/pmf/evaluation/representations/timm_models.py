"""Representations from timm models, by name or by alias (``dinov2`` = DINOv2 ViT-L/14, the FD_DINOv2
network of Stein et al. 2023; ``mae``, ``clip``, ``siglip``, ``convnext_v2``), with weights found offline.

Written here rather than taken from torch-fidelity 0.4: its DINOv2 and CLIP extractors read only uint8
images (no gradient to the images, which the FD loss needs), fetch DINOv2 through ``torch.hub.load`` of the
GitHub repository (code and weights from the network) and refuse a local weights file.

Where the weights are looked for, in order: ``weights=`` (must exist), ``$PMF_<NAME>_WEIGHTS`` (e.g.
``$PMF_DINOV2_WEIGHTS``), the Hugging Face cache (``timm/<model>``: model.safetensors or pytorch_model.bin)
and the torch-hub cache (``$TORCH_HOME/hub/checkpoints/<model>.safetensors`` or ``.pth``). Nothing is
downloaded: a missing file is one error naming it and where to put it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import PMFError
from ...extras import needs
from .base import RESIZE_RULE, Representation, check_images, resize, to_rgb


@dataclass(frozen=True)
class TimmSpec:
    """A timm model and how it is fed: ``input_size`` (None: the pretrained config's) and extra
    ``create_model`` arguments (``img_size`` for a ViT read at another size than it was trained)."""

    model: str
    input_size: int | None = None
    kwargs: dict = field(default_factory=dict)


ALIASES = {
    "dinov2": TimmSpec("vit_large_patch14_dinov2.lvd142m", 224, {"img_size": 224}),  # dgm-eval's 224 px
    "mae": TimmSpec("vit_large_patch16_224.mae"),
    "clip": TimmSpec("vit_large_patch14_clip_224.openai"),
    "siglip": TimmSpec("vit_so400m_patch14_siglip_224.webli"),
    "convnext_v2": TimmSpec("convnextv2_base.fcmae_ft_in22k_in1k"),  # the perceptual loss's network
}
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def env_name(name: str) -> str:
    return "PMF_" + re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") + "_WEIGHTS"


def candidate_paths(name: str, model: str) -> list[Path]:
    """Where the weights of registry entry ``name`` (timm ``model``) may be, after the environment variable."""
    out = []
    try:
        import huggingface_hub
    except ImportError:
        huggingface_hub = None
    if huggingface_hub is not None:
        for f in HF_FILES:
            hit = huggingface_hub.try_to_load_from_cache(f"timm/{model}", f)
            if isinstance(hit, str):
                out.append(Path(hit))
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return out + [hub / f"{model}.safetensors", hub / f"{model}.pth"]


def find_weights(name: str, model: str, weights=None) -> Path:
    """The local weights file of ``model``, or one PMFError naming the file and where to put it."""
    env = env_name(name)
    explicit = weights or os.environ.get(env)
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        origin = "weights=" if weights else f"${env}"
        raise PMFError(f"{name}: weights file {str(path)!r} (from {origin}) does not exist")
    tried = candidate_paths(name, model)
    for p in tried:
        if p.is_file():
            return p
    raise PMFError(f"{name}: the weights of timm model {model} are not on this machine (never random weights). "
                   f"Download model.safetensors from https://huggingface.co/timm/{model} and point ${env} at it, "
                   f"or put it at {str(tried[-2])!r}, or fill the Hugging Face cache on a connected machine "
                   f"(`hf download timm/{model} model.safetensors`)")


class TimmRepresentation(Representation):
    """[B, C, H, H] in [-1, 1] -> [B, D]: RGB in [0, 1], resized, normalised with the model's mean/std, and
    the model's pooled pre-logits features (class token or average, as the pretrained model pools)."""

    def __init__(self, name: str, spec: TimmSpec, net: torch.nn.Module, weights: str):
        super().__init__()
        cfg = net.pretrained_cfg
        self.name, self.model, self.net, self.weights = name, spec.model, net, weights
        self.input_size = spec.input_size or cfg["input_size"][-1]
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.feature_dim = net.num_features
        self.pooling = getattr(net, "global_pool", "avg")
        self.freeze()

    def _mode(self) -> str:
        return self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bicubic"

    def preprocessing(self) -> dict:
        mean, std = ([round(v, 8) for v in t.flatten().tolist()] for t in (self.mean, self.std))
        pooled = "class token" if self.pooling == "token" else self.pooling or "none"
        return {"input_size": self.input_size, "expected_range": [-1, 1], "timm_model": self.model,
                "normalisation": f"(x + 1) / 2, then (. - mean) / std with mean {mean}, std {std}",
                "channels": "grey repeated to RGB",
                "resize": RESIZE_RULE.format(mode=self._mode(), size=self.input_size),
                "pooling": f"timm pre-logits ({pooled})", "weights_file": Path(self.weights).name}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_rgb(check_images(images, self.name))
        x = (resize((x + 1) / 2, self.input_size, self._mode()) - self.mean) / self.std  # (B, 3, S, S)
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True).float()


def spec_of(name: str) -> TimmSpec | None:
    """The alias's spec, a spec for a timm model name, or None when timm does not know the name."""
    if name in ALIASES:
        return ALIASES[name]
    try:
        import timm
    except ImportError:
        return None
    return TimmSpec(name) if "." in name and timm.is_model(name) else None


def timm_representation(name: str, *, weights=None, device=None, model_kwargs: dict | None = None
                        ) -> TimmRepresentation:
    """The timm entry ``name`` with its local weights; ``model_kwargs`` are extra ``create_model``
    arguments (a smaller network of the same layout in tests)."""
    spec = spec_of(name)
    if spec is None:
        raise PMFError(f"{name!r} is not a timm model with pretrained weights (give 'arch.tag', e.g. "
                       "vit_large_patch14_dinov2.lvd142m)")
    path = find_weights(name, spec.model, weights)
    with needs("perceptual", f"the {name} representation needs timm"):
        import timm
    kwargs = {**spec.kwargs, **(model_kwargs or {}), "num_classes": 0}
    try:
        net = timm.create_model(spec.model, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except Exception as err:  # a wrong, truncated or foreign file
        raise PMFError(f"{str(path)!r} does not hold {spec.model} weights ({type(err).__name__}: "
                       f"{str(err).splitlines()[0][:300] if str(err) else ''})") from None
    return TimmRepresentation(name, spec, net, str(path)).to(device or "cpu")
