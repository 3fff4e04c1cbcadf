"""One- and few-step pMF samplers (spec section 4) and per-image seeding."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .config import RELEASED_SAMPLING, ModelConfig, preset_of
from .errors import PMFError
from .nn.model import as_batch
from .objective import to_velocity
from .seeds import IMAGE, derive_seed


def _check_guidance(omega, t_min, t_max, steps) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise PMFError(f"steps must be a positive integer, got {steps!r}")
    for name, value in (("omega", omega), ("t_min", t_min), ("t_max", t_max)):
        if not torch.is_tensor(value) and not isinstance(value, (int, float)):
            raise PMFError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if bool(torch.as_tensor(omega <= 0).any()):
        raise PMFError(f"omega must be positive, got {omega}")
    if bool(torch.as_tensor(t_min > t_max).any()):
        raise PMFError(f"t_min must be <= t_max, got t_min={t_min} > t_max={t_max}")


@dataclass(frozen=True)
class SamplingSetting:
    """A guidance setting with the EMA it belongs to and where it came from (``source``, for messages)."""

    omega: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0
    steps: int = 1
    ema: str | None = None  # an EMA name of a training checkpoint ('hl2000', 'd0.99'), None: the file's weights
    source: str = "no guidance (omega 1 on [0, 1])"

    def to_dict(self) -> dict:
        """The setting as JSON-ready fields (what exports and model cards record)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict, **changes) -> SamplingSetting:
        """A setting from ``to_dict``'s fields (unknown keys are ignored, missing ones take the defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in fields.items() if k in known}, **changes})

    def describe(self) -> str:
        ema = f", EMA {self.ema}" if self.ema else ""
        return (f"omega {self.omega:g}, interval [{self.t_min:g}, {self.t_max:g}], {self.steps} step(s){ema} "
                f"({self.source})")


def default_setting(config: ModelConfig, train_config: dict | None = None,
                    emas: Sequence[str] = ()) -> SamplingSetting:
    """The sampling setting a checkpoint should be used with unless the user says otherwise.

    A model of a released preset gets the released setting (spec section 4: omega, interval, and the EMA
    half-life of the released weights where ``emas`` has it). Otherwise a training checkpoint gets its
    recipe's sampling setting (``train_config["sample"]``) with its first EMA; anything else omega 1 on [0, 1]."""
    arch = (train_config or {}).get("arch") or preset_of(config)
    if arch in RELEASED_SAMPLING:
        rel = RELEASED_SAMPLING[arch]
        name = f"hl{rel['ema_halflife_kimg']}"
        ema = name if name in emas else (next(iter(emas)) if emas else None)
        return SamplingSetting(rel["omega"], rel["t_min"], rel["t_max"], 1, ema, f"the released setting of {arch}")
    ema = next(iter(emas)) if emas else None
    cfg = (train_config or {}).get("sample")
    if cfg:
        return SamplingSetting(float(cfg["omega"]), float(cfg["t_min"]), float(cfg["t_max"]), 1, ema,
                               "the training recipe's sampling setting")
    return SamplingSetting(ema=ema)


@torch.no_grad()
def sample(model, noise: torch.Tensor, labels: torch.Tensor, *, steps: int = 1, omega=1.0, t_min=0.0, t_max=1.0,
           prediction: str = "x") -> torch.Tensor:
    """Images [B, C, H, W] from ``noise`` (already times the noise scale) in ``steps`` u-head passes:
    z <- z - (t_i - t_{i+1}) u(z, h = t_i - t_{i+1}, omega, t_min, t_max, y), t = linspace(1, 0, N + 1).
    Guidance is an input of the network: no extra unconditional pass."""
    _check_guidance(omega, t_min, t_max, steps)
    B, dev = noise.shape[0], noise.device
    omega, t_min, t_max = (as_batch(v, B, dev, n) for v, n in ((omega, "omega"), (t_min, "t_min"), (t_max, "t_max")))
    labels = as_batch(labels, B, dev, "labels", dtype=torch.long)
    grid = torch.linspace(1.0, 0.0, steps + 1, device=dev)
    z = noise
    for i in range(steps):
        t, r = grid[i].expand(B), grid[i + 1].expand(B)
        x_u, _ = model(z, t - r, omega, t_min, t_max, labels, heads="u")
        z = z - (t - r).view(-1, 1, 1, 1) * to_velocity(z, x_u, t, prediction)
    return z


def sample_from(model, unit_noise: torch.Tensor, labels: torch.Tensor, *, noise_scale: float = 1.0, steps: int = 1,
                omega=1.0, t_min=0.0, t_max=1.0) -> torch.Tensor:
    """``sample`` of ``noise_scale * unit_noise``; ``model`` is the network, or a runtime that holds the whole
    sampler and scales the noise itself (an exported ONNX file: ``pmf.onnx_runtime.OnnxGenerator``)."""
    runtime = getattr(model, "sample_unit_noise", None)
    if runtime is not None:
        _check_guidance(omega, t_min, t_max, steps)
        return runtime(unit_noise, labels, steps=steps, omega=omega, t_min=t_min, t_max=t_max)
    return sample(model, noise_scale * unit_noise, labels, steps=steps, omega=omega, t_min=t_min, t_max=t_max)


PRECISIONS = ("fp32", "bf16")


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


def generate(model, indices: Sequence[int], labels: torch.Tensor, *, seed: int, batch_size: int = 64,
             steps: int = 1, omega=1.0, t_min=0.0, t_max=1.0, noise_scale: float = 1.0, device=None,
             progress: bool = True, precision: str = "fp32") -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices, uint8 images [b, H, W, C]) in batches; image i depends only on (seed, i, label).
    ``precision="bf16"`` samples under bf16 autocast; ``model`` may come from ``prepare_sampler``, or be a
    runtime of ``sample_from`` (then pass ``device``)."""
    cfg = model.config
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
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
                            steps=steps, omega=omega, t_min=t_min, t_max=t_max)
        bar.update(len(idx))
        yield idx, to_uint8(x)
    bar.close()
