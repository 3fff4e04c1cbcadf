"""Where and what a command samples: the device check, the model of ``--checkpoint`` (a file, a run folder or
``random``) with its sampling setting, and the flags that choose them."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import PMFError
from ..model_configs import PRESETS
from ..vocabulary import PRECISIONS
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


def load_for_sampling(args, device, ema: str | None = None):
    """``pmf.checkpoints.load.LoadedCheckpoint`` of ``--checkpoint`` (``random``: an untrained ``--arch`` model seeded
    by ``--seed`` (0 for commands without it), sampled without guidance by default); ``ema`` overrides ``--ema``."""
    from ..checkpoints.load import LoadedCheckpoint, load_checkpoint
    from ..nn.model import build_model
    from ..sampling import SamplingSetting

    if args.checkpoint == "random":
        if args.arch is None:
            raise PMFError("--checkpoint random needs --arch")
        with torch.random.fork_rng(devices=[]):  # the weights of --seed, the caller's random state untouched
            torch.manual_seed(getattr(args, "seed", 0))
            model = build_model(args.arch)
        model = model.to(device).eval()
        return LoadedCheckpoint(model, args.arch, None, SamplingSetting(source="an untrained model: no guidance"))
    return load_checkpoint(checkpoint_arg(args.checkpoint), arch=args.arch, ema=ema or args.ema, device=device)


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


def sampling_setting(loaded, *, omega: float | None = None, t_min: float | None = None, t_max: float | None = None,
                     steps: int | None = None):
    """The checkpoint's default setting (``loaded.setting``) with each field the user gave replaced; the EMA is
    the one actually loaded. ``describe()`` says where the values came from."""
    from dataclasses import replace

    base = loaded.setting
    given = {k: v for k, v in (("omega", omega), ("t_min", t_min), ("t_max", t_max), ("steps", steps))
             if v is not None}
    source = base.source
    changed = [k for k, v in given.items() if v != getattr(base, k)]
    if loaded.ema != base.ema:
        changed.append("EMA")
    if changed:
        source = f"{source}; {', '.join(changed)} from the flags"
    return replace(base, **given, ema=loaded.ema, source=source)


def add_common_model_args(p: argparse.ArgumentParser, *, sweep: bool = False, onnx: bool = True,
                          required: bool = True) -> None:
    add_checkpoint(p, onnx=onnx, required=required)
    p.add_argument("--arch", choices=list(PRESETS), help="architecture of a release-format file "
                   "(default: recorded in our checkpoints, inferred from the shapes otherwise)")
    add_ema(p, sweep=sweep)
    p.add_argument("--noise-scale", type=float, default=None, help="noise scale (default: the preset's / "
                   "recorded value)")
    add_device(p)


def add_sampling_speed_args(p: argparse.ArgumentParser) -> None:
    """Precision and compilation of the sampler (``pmf sample``, ``pmf eval``)."""
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="fp32 (default) or bf16 autocast (faster on GPUs and CPUs with AMX; images differ slightly)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network with frozen weights, one "
                   "graph per batch size (pays off for many images: compiling takes from seconds to minutes)")
    p.add_argument("--cuda-graphs", action="store_true", help="with --compile on a GPU: replay CUDA graphs")
