"""Where and what a command samples: the device check, the model of ``--checkpoint`` (a file, a run folder or
``random``) with its sampling setting, and the flags that choose them."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import PMFError
from ..model_configs import PRESETS
from ._vocabulary import add_checkpoint, add_device, add_ema


def check_device(text: str | None) -> str:
    """The device to run on: ``text`` or, for None, cuda when a GPU is visible else cpu; a one-line error for
    a device that is not there."""
    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise PMFError(f"--device {text!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PMFError(f"--device {text}: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is "
                           "False: a CPU-only build, or no driver); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PMFError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PMFError(f"--device {text}: MPS is not available on this machine; use --device cpu")
    return text


def sampler_options(args, **changes):
    """``pmf.sampler_loading.SamplerOptions`` of the flags a command has (``--arch``, ``--ema``, ``--device``,
    ``--precision``, ``--compile`` ...); ``changes`` replace them. A flag the command lacks takes the default."""
    from dataclasses import fields

    from ..sampler_loading import SamplerOptions

    device = getattr(args, "device", None)
    given = {f.name: getattr(args, f.name) for f in fields(SamplerOptions) if hasattr(args, f.name)}
    return SamplerOptions(**{**given, "device": None if device is None else check_device(device), **changes})


def load_sampler_arg(args, **changes):
    """The ``pmf.sampler_loading.Sampler`` of ``--checkpoint`` (a run folder gives its newest checkpoint) with
    the command's flags (``sampler_options``)."""
    from ..sampler_loading import load_sampler

    return load_sampler(checkpoint_arg(args.checkpoint), sampler_options(args, **changes))


def load_for_sampling(args, device, ema: str | None = None):
    """``pmf.checkpoints.load.LoadedCheckpoint`` of ``--checkpoint`` (``random``: an untrained ``--arch`` model
    seeded by ``--seed``, 0 for commands without it); ``ema`` overrides ``--ema``."""
    from ..sampler_loading import SamplerOptions, load_sampler

    options = SamplerOptions(arch=args.arch, ema=ema or args.ema, device=device, seed=getattr(args, "seed", 0))
    return load_sampler(checkpoint_arg(args.checkpoint), options).loaded


def checkpoint_arg(spec: str) -> str:
    """``--checkpoint`` with a run folder or its ``checkpoints/`` folder replaced by its newest checkpoint (said
    in one line); anything else unchanged."""
    from ..checkpoints.hub import is_hub_folder
    from ..checkpoints.load import run_checkpoint

    if not Path(spec).expanduser().is_dir() or is_hub_folder(spec):
        return spec
    found = run_checkpoint(spec)  # a sharded checkpoint folder comes back as it is
    if found != Path(spec).expanduser():
        print(f"checkpoint: {found} (the newest in {spec})", flush=True)
    return str(found)


def add_arch(p: argparse.ArgumentParser) -> None:
    """--arch: a preset, for a release-format file or --checkpoint random."""
    p.add_argument("--arch", choices=list(PRESETS), help="architecture of a release-format file, or of --checkpoint "
                   "random (default: recorded in our checkpoints, inferred from the shapes otherwise)")


def add_common_model_args(p: argparse.ArgumentParser, *, sweep: bool = False, onnx: bool = True,
                          required: bool = True) -> None:
    add_checkpoint(p, onnx=onnx, required=required)
    add_arch(p)
    add_ema(p, sweep=sweep)
    p.add_argument("--noise-scale", type=float, default=None, help="noise scale (default: the preset's / "
                   "recorded value)")
    add_device(p)
