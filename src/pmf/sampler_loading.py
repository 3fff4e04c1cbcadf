"""Any sampler spec loaded as one object with one sampling call: a torch checkpoint of any kind
``pmf.load_checkpoint`` reads (a file, a sharded folder, a hub folder or ``hf:`` name, a URL), ``random`` (an
untrained model of a preset), or an ``.onnx`` file of ``pmf export`` run in onnxruntime. ``pmf sample``,
``pmf eval`` and ``pmf serve`` load through ``load_sampler`` and never ask which kind they hold."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .checkpoints.files import is_onnx
from .checkpoints.load import LoadedCheckpoint, load_checkpoint
from .errors import PMFError
from .export.onnx_export import FP32
from .sampling import generate, noise_scale_of, prepare_sampler
from .sampling_setting import SamplingSetting


@dataclass(frozen=True)
class SamplerOptions:
    """How a sampler is loaded and run. ``arch``: the preset of a release-format file or of ``random``; ``ema``:
    the EMA of a training checkpoint (None: the checkpoint's setting's); ``seed``: the weights of ``random``;
    ``device`` None: cuda when visible, cpu for an ONNX file."""

    arch: str | None = None
    ema: str | None = None
    device: str | None = None
    precision: str = "fp32"
    compile: bool = False
    cuda_graphs: bool = False
    noise_scale: float | None = None  # None: the checkpoint's
    steps: int | None = None  # checked against an ONNX graph's steps before any work (None: not asked)
    threads: int | None = None  # onnxruntime's threads (None: its default)
    seed: int = 0


@dataclass
class Sampler:
    """A loaded sampler: ``model`` is the network (prepared by ``pmf.sampling.prepare_sampler``) or an
    ``OnnxGenerator``; ``loaded`` is what the checkpoint records (setting, class names, preset, data)."""

    spec: str
    loaded: LoadedCheckpoint
    model: object
    options: SamplerOptions
    onnx: bool

    @property
    def config(self):
        return self.loaded.model.config

    @property
    def noise_scale(self) -> float:
        return noise_scale_of(self.config, self.options.noise_scale)

    @property
    def device(self) -> str:
        return self.options.device

    @property
    def weights(self) -> dict:
        """How the weights are stored: fp32, or an int8 ONNX file's record with its measured error."""
        return self.model.weights if self.onnx else dict(FP32)

    @property
    def ema(self) -> str | None:
        return self.loaded.ema

    @property
    def step_limits(self) -> tuple[int, int] | None:
        """(fewest, most) steps a call may ask for: an ONNX graph holds one count; None: any."""
        return (self.model.steps, self.model.steps) if self.onnx else None

    def setting(self, *, omega: float | None = None, t_min: float | None = None, t_max: float | None = None,
                steps: int | None = None) -> SamplingSetting:
        """The checkpoint's setting with each field given replaced; the EMA is the one loaded. ``describe()``
        says where the values came from."""
        base = self.loaded.setting
        given = {k: v for k, v in (("omega", omega), ("t_min", t_min), ("t_max", t_max), ("steps", steps))
                 if v is not None}
        changed = [k for k, v in given.items() if v != getattr(base, k)]
        if self.loaded.ema != base.ema:
            changed.append("EMA")
        source = f"{base.source}; {', '.join(changed)} from the flags" if changed else base.source
        return dataclasses.replace(base, **given, ema=self.loaded.ema, source=source)

    def generate(self, indices: Sequence[int], labels: torch.Tensor, *, seed: int, setting: SamplingSetting,
                 batch_size: int = 64, progress: bool = True) -> Iterator[tuple[list[int], torch.Tensor]]:
        """``pmf.sampling.generate`` with this sampler's device, precision and noise scale: (indices, uint8
        images [b, H, W, C]) in batches; image i depends only on (seed, i, its label, the setting)."""
        return generate(self.model, indices, labels, seed=seed, batch_size=batch_size, setting=setting,
                        noise_scale=self.noise_scale, device=self.device, precision=self.options.precision,
                        progress=progress)

    def with_ema(self, ema: str) -> Sampler:
        """The same spec with another EMA's weights (a sweep over EMAs); itself when ``ema`` is loaded."""
        if ema == self.ema:
            return self
        return load_sampler(self.spec, dataclasses.replace(self.options, ema=ema))


def sampler_device(spec: str | os.PathLike, device: str | None = None) -> str:
    """Where the sampler of ``spec`` runs: ``device`` when given, else cpu for an ONNX file (onnxruntime runs it
    there) and cuda when a GPU is visible for anything else. Commands that set up a device before loading (the
    process group of ``pmf eval``) ask this first."""
    if device is not None:
        return device
    return "cpu" if is_onnx(str(spec)) or not torch.cuda.is_available() else "cuda"


def load_sampler(spec: str | os.PathLike, options: SamplerOptions = SamplerOptions()) -> Sampler:
    """The sampler of ``spec``; an option that cannot apply to it (``--compile`` for an ONNX file, an ONNX
    graph's other step count) is a one-line ``PMFError`` before any sampling."""
    spec = str(spec)
    options = dataclasses.replace(options, device=sampler_device(spec, options.device))
    if is_onnx(spec):
        from .export.onnx_runtime import onnx_checkpoint

        loaded = onnx_checkpoint(spec, arch=options.arch, ema=options.ema, compile=options.compile,
                                 cuda_graphs=options.cuda_graphs, precision=options.precision,
                                 device=options.device, threads=options.threads,
                                 noise_scale=options.noise_scale, steps=options.steps)
        return Sampler(spec, loaded, loaded.model, options, onnx=True)
    loaded = _torch_checkpoint(spec, options)
    model = prepare_sampler(loaded.model, compile=options.compile, cuda_graphs=options.cuda_graphs)
    return Sampler(spec, loaded, model, options, onnx=False)


def _torch_checkpoint(spec: str, options: SamplerOptions) -> LoadedCheckpoint:
    """``load_checkpoint`` of ``spec``; ``random``: an untrained ``arch`` model with the weights of ``seed``,
    sampled without guidance by default (the caller's random state untouched)."""
    if spec != "random":
        return load_checkpoint(spec, arch=options.arch, ema=options.ema, device=options.device)
    from .nn.model import build_model

    if options.arch is None:
        raise PMFError("--checkpoint random needs --arch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = build_model(options.arch)
    model = model.to(options.device).eval()
    return LoadedCheckpoint(model, options.arch, None, SamplingSetting(source="an untrained model: no guidance"))
