"""Shared argument helpers of the ``pmf`` commands: one spelling, one default and one check per concept
(device, output folder, ...), so that every command treats them the same way."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
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
    by ``--seed`` (0 for commands without it), sampled without guidance by default); ``ema`` overrides ``--ema``."""
    from ..checkpoint import LoadedCheckpoint, load_checkpoint
    from ..nn.model import build_model
    from ..sampling import SamplingSetting

    if args.checkpoint == "random":
        if args.arch is None:
            raise PMFError("--checkpoint random needs --arch")
        torch.manual_seed(getattr(args, "seed", 0))
        model = build_model(args.arch).to(device).eval()
        return LoadedCheckpoint(model, args.arch, None, SamplingSetting(source="an untrained model: no guidance"))
    return load_checkpoint(checkpoint_arg(args.checkpoint), arch=args.arch, ema=ema or args.ema, device=device)


def checkpoint_arg(spec: str) -> str:
    """``--checkpoint`` with a run folder or its ``checkpoints/`` folder replaced by its newest checkpoint (said
    in one line); anything else unchanged."""
    from ..checkpoint import run_checkpoint
    from ..hub import is_hub_folder

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


# ---------------------------------------------------------------------------------------------------------
# One flag per concept. Each command builds its parser from these, so a concept has one spelling, one
# default rule and one help text everywhere; old spellings stay accepted as hidden aliases with a note.

# concept -> the one spelling every command uses (tests check that no command spells a concept otherwise)
CONCEPTS = {
    "checkpoint": "--checkpoint", "output": "--out", "workers": "--workers", "threads": "--threads",
    "progress": "--no-progress", "device": "--device", "image count": "--num-images", "guidance": "--omega",
    "interval": "--interval", "ema": "--ema", "seed": "--seed", "batch": "--batch-size",
}
# old spellings -> their replacement (hidden aliases)
DEPRECATED = {"--num-workers": "--workers", "--num-samples": "--num-images", "--emas": "--ema",
              "--t-min": "--interval", "--t-max": "--interval"}
DEVICE_HELP = "cpu, cuda, cuda:1, mps (default: cuda when a GPU is visible, else cpu)"


class PMFArgumentParser(argparse.ArgumentParser):
    """argparse with a suggestion for a mistyped flag (difflib over the command's own flags), help that shows
    defaults, and no abbreviated flags (a prefix of a flag is a typo to report, not a flag to guess)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        match = re.search(r"unrecognized arguments: (.*)", message)
        if match:
            flags = [s for a in self._actions for s in a.option_strings if a.help != argparse.SUPPRESS]
            hints = []
            for word in match.group(1).split():
                if word.startswith("-"):
                    close = difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6)
                    if close:
                        hints.append(f"{word}: did you mean {close[0]}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        super().error(message)


class _Deprecated(argparse.Action):
    """A hidden old spelling: stores into the new flag's destination and prints a one-line note."""

    def __init__(self, option_strings, dest, new: str = "", convert=None, **kw):
        super().__init__(option_strings, dest, **kw)
        self.new, self.convert = new, convert

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"pmf: note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.convert(values) if self.convert else values)


def deprecated(p, old: str, dest: str, *, convert=None, type=None, nargs=None) -> None:
    p.add_argument(old, dest=dest, action=_Deprecated, new=DEPRECATED[old], convert=convert, type=type,
                   nargs=nargs, help=argparse.SUPPRESS)


def add_checkpoint(p, *, required: bool = True, random: bool = True) -> None:
    extra = ", or 'random' (an untrained model of --arch, to try the pipeline)" if random else ""
    p.add_argument("--checkpoint", required=required, help="checkpoint: our training checkpoint (a file, or "
                   "the folder of a sharded one; a run folder gives its newest) or export, a release-format state "
                   f"dict, .safetensors, a hub folder (pmf export --format hub) or hf:OWNER/REPO holding one, a URL or "
                   f"hf:OWNER/REPO/FILE{extra}")


def add_out(p, *, help: str, default=None, required: bool = False) -> None:
    p.add_argument("--out", default=default, required=required, help=help)


def add_device(p) -> None:
    p.add_argument("--device", default=None, help=DEVICE_HELP)


def add_progress(p) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def add_workers(p, *, default=None, help: str) -> None:
    p.add_argument("--workers", type=int, default=default, help=help)


def add_seed(p, *, default=0, help: str = "random seed (default 0)") -> None:
    p.add_argument("--seed", type=int, default=default, help=help)


def add_batch_size(p, *, default=64, help: str | None = None) -> None:
    p.add_argument("--batch-size", type=int, default=default,
                   help=help or f"images per forward pass (default {default}; results do not depend on it)")


def add_num_images(p, *, default=None, help: str) -> None:
    p.add_argument("--num-images", type=int, default=default, help=help)


def add_guidance(p, *, sweep: bool = False, default_help: str = "the checkpoint's setting") -> None:
    """--omega and --interval T_MIN:T_MAX (comma-separated lists where ``sweep``); --t-min / --t-max stay
    accepted as hidden aliases."""
    many = ", comma-separated for a sweep" if sweep else ""
    p.add_argument("--omega", default=None, help=f"guidance scale{many} (1: no guidance; default: {default_help}: "
                   "the released one for released models, else the training recipe's)")
    p.add_argument("--interval", default=None, metavar="T_MIN:T_MAX", help=f"guidance interval{many}, e.g. "
                   f"0.1:0.8 (default: {default_help})")
    deprecated(p, "--t-min", "t_min", type=float)
    deprecated(p, "--t-max", "t_max", type=float)


def add_ema(p, *, sweep: bool = False) -> None:
    many = "; comma-separated to sweep several" if sweep else ""
    p.add_argument("--ema", default=None, help="EMA of a training checkpoint (e.g. hl1000, d0.99; 'raw' for the "
                   f"raw weights; default: the EMA of the checkpoint's sampling setting){many}")
    if sweep:
        deprecated(p, "--emas", "ema")


def numbers(text: str | None, flag: str, *, allow_empty: bool = False) -> list[float] | None:
    """Comma-separated numbers of ``flag`` (None when not given); an empty list only with ``allow_empty``."""
    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise PMFError(f"{flag} takes numbers separated by commas, got {text!r}") from None
    if not values and not allow_empty:
        raise PMFError(f"{flag} is empty")
    return values


def intervals(text: str | None) -> list[tuple[float, float]] | None:
    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        try:
            lo, hi = (float(v) for v in part.split(":"))
        except ValueError:
            raise PMFError(f"--interval takes T_MIN:T_MAX pairs separated by commas, e.g. '0.1:0.8' or "
                           f"'0.1:0.8,0.2:0.7', got {part!r}") from None
        out.append((lo, hi))
    return out


def one_guidance(args) -> tuple[float | None, float | None, float | None]:
    """(omega, t_min, t_max) given for a single setting (None: from the checkpoint); --interval and the old
    --t-min / --t-max both set the interval."""
    omega = numbers(args.omega, "--omega")
    if omega is not None and len(omega) != 1:
        raise PMFError(f"--omega takes one number here, got {args.omega!r} (sweeps: pmf eval)")
    pairs = intervals(args.interval)
    if pairs is not None and len(pairs) != 1:
        raise PMFError(f"--interval takes one T_MIN:T_MAX pair here, got {args.interval!r} (sweeps: pmf eval)")
    t_min, t_max = pairs[0] if pairs else (getattr(args, "t_min", None), getattr(args, "t_max", None))
    return (omega[0] if omega else None), t_min, t_max


def legacy_positionals(args, names: tuple[str, ...] = ("checkpoint", "out")) -> None:
    """Accept the old positional form (``pmf export CHECKPOINT OUT``) with a note; require the flags otherwise."""
    given = list(getattr(args, "legacy", None) or [])
    if given:
        if len(given) > len(names):
            raise PMFError(f"unexpected arguments {given[len(names):]}")
        print(f"pmf: note: positional {' '.join(n.upper() for n in names[:len(given)])} is deprecated; use "
              f"{' '.join('--' + n for n in names[:len(given)])}", file=sys.stderr)
        for name, value in zip(names, given):
            if getattr(args, name, None) is not None:
                raise PMFError(f"--{name} given twice (as a flag and as a positional argument)")
            setattr(args, name, value)
    missing = [f"--{n}" for n in names if getattr(args, n, None) is None]
    if missing:
        raise PMFError(f"missing {' and '.join(missing)}")
