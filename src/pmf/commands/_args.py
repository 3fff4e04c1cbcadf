"""Shared argument helpers of the ``pmf`` commands: one spelling, one default and one check per concept
(device, output folder, ...), so that every command treats them the same way."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PMFError


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


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as an output folder, created if missing; a one-line error when it is a file or cannot be made."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise PMFError(f"{flag} {str(path)!r} is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PMFError(f"cannot create the output folder {str(path)!r}: {err.strerror or err}") from None
    return path


def output_file(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as an output file whose folder is created; a one-line error when it names a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PMFError(f"{flag} {str(path)!r} is a folder; give a file name")
    output_folder(path.parent, flag=f"the folder of {flag}")
    return path


def check_guidance(*, omega: float | None = None, t_min: float | None = None, t_max: float | None = None,
                   steps: int | None = None) -> None:
    """The sampling flags, checked before any work starts (None: not given)."""
    if steps is not None and steps < 1:
        raise PMFError(f"--steps must be >= 1, got {steps}")
    if omega is not None and not omega > 0:
        raise PMFError(f"--omega must be > 0 (1: no guidance), got {omega:g}")
    for name, value in (("--t-min", t_min), ("--t-max", t_max)):
        if value is not None and not 0 <= value <= 1:
            raise PMFError(f"{name} must be in [0, 1], got {value:g}")
    if t_min is not None and t_max is not None and t_min > t_max:
        raise PMFError(f"the guidance interval needs t_min <= t_max, got [{t_min:g}, {t_max:g}]")


def load_for_sampling(args, device, ema: str | None = None):
    """``pmf.checkpoint.LoadedCheckpoint`` of ``--checkpoint`` (``random``: an untrained ``--arch`` model seeded
    by ``--seed``, sampled without guidance by default); ``ema`` overrides ``--ema``."""
    from ..checkpoint import LoadedCheckpoint, load_checkpoint
    from ..nn.model import build_model
    from ..sampling import SamplingSetting

    if args.checkpoint == "random":
        if args.arch is None:
            raise PMFError("--checkpoint random needs --arch")
        torch.manual_seed(args.seed)
        model = build_model(args.arch).to(device).eval()
        return LoadedCheckpoint(model, args.arch, None, SamplingSetting(source="an untrained model: no guidance"))
    return load_checkpoint(args.checkpoint, arch=args.arch, ema=ema or args.ema, device=device)


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
