"""One- and few-step pMF samplers (spec section 4) and per-image seeding."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .errors import PMFError
from .nn.model import as_batch
from .objective import to_velocity
from .sampling_setting import SamplingSetting, check_guidance, check_prediction, check_steps, default_setting
from .seeds import IMAGE, derive_seed
from .vocabulary import PRECISIONS

__all__ = ["SamplingSetting", "default_setting", "flow_map_step", "generate", "image_labels", "image_noise",
           "model_setting", "prepare_sampler", "sample", "sample_with_grad", "time_grid", "to_uint8", "u_head"]


def time_grid(steps: int) -> list[float]:
    """t_0 = 1 > t_1 > ... > t_N = 0, the float32 values of linspace(1, 0, N + 1) as Python floats (spec
    section 4); the sampler and the exported generator both step on it."""
    check_steps(steps)
    return torch.linspace(1.0, 0.0, steps + 1).tolist()


def flow_map_step(denoise, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, omega: torch.Tensor,
                  t_min: torch.Tensor, t_max: torch.Tensor, labels: torch.Tensor, prediction: str = "x"):
    """One pMF step z_r = z_t - (t - r) u(z_t, h = t - r, omega, t_min, t_max, y) (spec section 4), the one
    update of ``sample``, the exported generator and the diffusers pipeline. ``denoise(z, h, omega, t_min,
    t_max, labels)`` returns the u-head's prediction [B, C, H, W] (x, or u for u-prediction); z [B, C, H, W],
    t, r, omega, t_min, t_max [B], labels [B]. Tensors only, no data-dependent branch: export-safe."""
    h = t - r  # (B,)
    return z - h.view(-1, 1, 1, 1) * to_velocity(z, denoise(z, h, omega, t_min, t_max, labels), t, prediction)


def u_head(model):
    """``flow_map_step``'s ``denoise`` of a pmfDiT: its u-head's prediction."""
    return lambda z, h, omega, t_min, t_max, labels: model(z, h, omega, t_min, t_max, labels, heads="u").x_u


@torch.no_grad()
def sample(model, noise: torch.Tensor, labels: torch.Tensor, *, steps: int = 1, omega=1.0, t_min=0.0, t_max=1.0,
           prediction: str = "x", setting: SamplingSetting | None = None) -> torch.Tensor:
    """Images [B, C, H, W] from ``noise`` (already times the noise scale) in ``steps`` u-head passes of
    ``flow_map_step`` on ``time_grid(steps)``. Guidance is an input of the network: no extra unconditional
    pass. omega, t_min, t_max may be [B] tensors (one setting per image); ``setting`` gives steps, guidance
    and prediction type at once instead."""
    return sample_with_grad(model, noise, labels, steps=steps, omega=omega, t_min=t_min, t_max=t_max,
                            prediction=prediction, setting=setting)


def sample_with_grad(model, noise: torch.Tensor, labels: torch.Tensor, *, steps: int = 1, omega=1.0, t_min=0.0,
                     t_max=1.0, prediction: str = "x", setting: SamplingSetting | None = None) -> torch.Tensor:
    """``sample`` with autograd recording (FD-loss post-training backpropagates through the sampler)."""
    if setting is not None:
        steps, omega, t_min, t_max, prediction = (setting.steps, setting.omega, setting.t_min, setting.t_max,
                                                  setting.prediction)
    check_prediction(prediction)
    check_guidance(omega, t_min, t_max)
    grid = time_grid(steps)
    B, dev = noise.shape[0], noise.device
    omega, t_min, t_max = (as_batch(v, B, dev, n) for v, n in ((omega, "omega"), (t_min, "t_min"), (t_max, "t_max")))
    labels = as_batch(labels, B, dev, "labels", dtype=torch.long)
    z, denoise = noise, u_head(model)
    for i in range(steps):
        t, r = (torch.full((B,), v, device=dev) for v in grid[i:i + 2])
        z = flow_map_step(denoise, z, t, r, omega, t_min, t_max, labels, prediction)
    return z


def model_setting(model, setting: SamplingSetting | None = None, **changes) -> tuple[torch.nn.Module,
                                                                                     SamplingSetting]:
    """(network, setting) for ``generate``: ``model`` is a network, ``pmf.load_checkpoint``'s result or an ONNX
    runtime. The setting is ``setting``, else the one it records (as ``pmf sample`` uses it), else
    ``default_setting`` of the network's config (the released setting for a released preset, else no guidance);
    ``changes`` (omega, t_min, t_max, steps, prediction; None: unchanged) replace its fields."""
    own = getattr(model, "setting", None)  # load_checkpoint's result, or a runtime that records its setting
    own = own if isinstance(own, SamplingSetting) else None
    net = model.model if own is not None and hasattr(model, "model") else model
    base = setting or own or default_setting(net.config)
    return net, base.replace(**changes)


def sample_from(model, unit_noise: torch.Tensor, labels: torch.Tensor, *, noise_scale: float = 1.0,
                setting: SamplingSetting | None = None, steps: int = 1, omega=1.0, t_min=0.0, t_max=1.0,
                prediction: str = "x") -> torch.Tensor:
    """``sample`` of ``noise_scale * unit_noise``; ``model`` is the network, or a runtime that holds the whole
    sampler, its prediction type included, and scales the noise itself (an exported ONNX file:
    ``pmf.export.onnx_runtime.OnnxGenerator``)."""
    runtime = getattr(model, "sample_unit_noise", None)
    if runtime is None:
        return sample(model, noise_scale * unit_noise, labels, steps=steps, omega=omega, t_min=t_min, t_max=t_max,
                      prediction=prediction, setting=setting)
    if setting is not None:
        steps, omega, t_min, t_max = setting.steps, setting.omega, setting.t_min, setting.t_max
    check_steps(steps)
    check_guidance(omega, t_min, t_max)
    return runtime(unit_noise, labels, steps=steps, omega=omega, t_min=t_min, t_max=t_max)


def prepare_sampler(model, *, compile: bool = False, cuda_graphs: bool = False):
    """The network as ``sample`` / ``generate`` should call it: unchanged, or with ``compile`` a
    ``torch.compile`` of it with inductor freezing (weights folded into the graph as constants, prepacked
    for oneDNN/MKL on a CPU) and one static graph per batch size (a last, smaller batch compiles once more).
    For inference only: the compiled graph keeps the weights it saw, so load them before and do not change
    them after. ``cuda_graphs`` adds CUDA-graph replay (GPU). The result still has ``config``."""
    if cuda_graphs and not compile:
        raise PMFError("CUDA graphs come with compile: pass compile=True as well")
    if not compile:
        return model
    options = {"freezing": True, **({"triton.cudagraphs": True} if cuda_graphs else {})}
    return torch.compile(model, dynamic=False, options=options)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise PMFError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def precision_context(precision: str, device: torch.device):
    """bf16 autocast (norms, rotations, softmax and the 1/t division stay float32) or nothing for fp32; the
    context can be entered again after each exit."""
    check_precision(precision)
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image ``index`` of a run with ``seed``, independent of batching and ranks."""
    return derive_seed(seed, index, stream=IMAGE)


def image_noise(indices: Sequence[int], shape: Sequence[int], *, seed: int, noise_scale: float = 1.0,
                device=None) -> torch.Tensor:
    """Noise [len(indices), *shape] with one generator per image index, times ``noise_scale``."""
    out = torch.empty((len(indices), *shape))
    for row, idx in enumerate(indices):
        gen = torch.Generator().manual_seed(image_seed(seed, int(idx)))
        out[row] = torch.randn(tuple(shape), generator=gen)
    return (noise_scale * out).to(device)


def image_labels(indices: Sequence[int], num_classes: int, *, seed: int) -> torch.Tensor:
    """A random class per image index, drawn from its own generator (independent of the noise stream)."""
    labels = [int(torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(
        image_seed(seed + 7919, int(i))))) for i in indices]
    return torch.tensor(labels, dtype=torch.long)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images [B, C, H, W] -> uint8 [B, H, W, C] as saved: round(clip((x + 1) / 2 * 255))."""
    return ((images.float() + 1) / 2 * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def noise_scale_of(config, given: float | None) -> float:
    """The noise scale images are drawn with: ``given``, or the model config's where None (the one rule for
    ``generate``, the sampler and the evaluation)."""
    return config.noise_scale if given is None else given


def generate(model, indices: Sequence[int], labels: torch.Tensor, *, seed: int, batch_size: int = 64,
             setting: SamplingSetting | None = None, steps: int | None = None, omega=None, t_min=None, t_max=None,
             noise_scale: float | None = None, device=None, progress: bool = True,
             precision: str = "fp32") -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices, uint8 images [b, H, W, C]) in batches; image i depends only on (seed, i, label).
    ``model``: a network (``prepare_sampler``'s result too) or ``pmf.load_checkpoint``'s result, sampled with
    its own setting unless ``setting`` or single fields are given (``model_setting``). ``noise_scale``
    defaults to the model's. ``precision="bf16"`` samples under bf16 autocast.
    A runtime of ``sample_from`` (an ONNX file) works too: then pass ``device``."""
    model, setting = model_setting(model, setting, steps=steps, omega=omega, t_min=t_min, t_max=t_max)
    cfg = model.config
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    noise_scale = noise_scale_of(cfg, noise_scale)
    device = device or next(model.parameters()).device
    amp = precision_context(precision, device)  # checks the name before any work
    indices = list(indices)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (len(indices),):
        raise PMFError(f"need one label per image: {len(indices)} images, labels of shape {list(labels.shape)}")
    bar = tqdm(total=len(indices), desc="sampling", unit="img", disable=not progress)
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        noise = image_noise(idx, shape, seed=seed, device=device)
        with amp:
            x = sample_from(model, noise, labels[start:start + batch_size].to(device), noise_scale=noise_scale,
                            setting=setting)
        bar.update(len(idx))
        yield idx, to_uint8(x)
    bar.close()
