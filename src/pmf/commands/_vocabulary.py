"""One flag per concept. Each command builds its parser from these, so a concept has one spelling, one default
rule and one help text everywhere (device, output folder, seed, ...); old spellings stay accepted as hidden
aliases with a note (``_deprecation``)."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

from ..errors import PMFError
from ._deprecation import deprecated

# concept -> the one spelling every command uses (tests check that no command spells a concept otherwise)
CONCEPTS = {
    "checkpoint": "--checkpoint", "output": "--out", "workers": "--workers", "threads": "--threads",
    "progress": "--no-progress", "device": "--device", "image count": "--num-images", "guidance": "--omega",
    "interval": "--interval", "ema": "--ema", "seed": "--seed", "batch": "--batch-size",
    "gradient accumulation": "--grad-accum",
}
DEVICE_HELP = "cpu, cuda, cuda:1, mps (default: cuda when a GPU is visible, else cpu)"


class PMFArgumentParser(argparse.ArgumentParser):
    """argparse with a suggestion for a mistyped flag (difflib over the command's own flags), errors in one line
    (no usage block), help that shows defaults, and no abbreviated flags (a prefix of a flag is a typo to report,
    not a flag to guess)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._words = list(sys.argv[1:] if args is None else args)  # for error(): the words this parser was given
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        flags = [s for a in self._actions for s in a.option_strings if a.help != argparse.SUPPRESS]
        match = re.search(r"unrecognized arguments: (.*)", message)
        # a mistyped flag: named in "unrecognized arguments", or hidden behind a missing required flag
        words = match.group(1).split() if match else [w for w in getattr(self, "_words", [])
                                                      if w.startswith("--") and w.split("=")[0] not in flags]
        hints = []
        for word in words:
            if word.startswith("-"):
                close = difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6)
                if close:
                    hints.append(f"{word}: did you mean {close[0]}?")
        if hints:
            message += " (" + "; ".join(hints) + ")"
        # one line, as the commands' own errors: a usage block of every flag would bury it (pmf train has 80)
        what = "commands" if any(isinstance(a, argparse._SubParsersAction) for a in self._actions) else "flags"
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the {what})\n")


def add_checkpoint(p, *, required: bool = True, random: bool = True, onnx: bool = True) -> None:
    extra = (", a FILE.onnx of pmf export (run in onnxruntime on the CPU)" if onnx else "") + \
        (", or 'random' (an untrained model of --arch, to try the pipeline)" if random else "")
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


def seed_value(text: str) -> int:
    """A --seed: an integer in [0, 2**63 - 1], as pmf serve takes it (``pmf.seeds.seed_problem``)."""
    from ..seeds import seed_problem

    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if seed_problem(seed):
        raise argparse.ArgumentTypeError(seed_problem(seed))
    return seed


def add_seed(p, *, default=0, help: str = "random seed (default 0)") -> None:
    p.add_argument("--seed", type=seed_value, default=default, help=help)


def add_batch_size(p, *, default=64, help: str | None = None) -> None:
    p.add_argument("--batch-size", type=int, default=default,
                   help=help or f"images per forward pass (default {default}; results do not depend on it)")


def add_num_images(p, *, default=None, help: str) -> None:
    p.add_argument("--num-images", type=int, default=default, help=help)
    deprecated(p, "--num-samples", "num_images", type=int)


def add_guidance(p, *, sweep: bool = False, default_help: str = "the checkpoint's setting") -> None:
    """--omega and --interval T_MIN:T_MAX (comma-separated lists where ``sweep``); --t-min / --t-max stay
    accepted as hidden aliases."""
    many = ", comma-separated for a sweep" if sweep else ""
    p.add_argument("--omega", default=None, help=f"guidance scale{many}, > 0 (1: no guidance; default: "
                   f"{default_help}: the released one for released models, else the training recipe's)")
    p.add_argument("--interval", default=None, metavar="T_MIN:T_MAX", help=f"guidance interval{many}, e.g. "
                   f"0.1:0.8, with 0 <= T_MIN <= T_MAX <= 1 (default: {default_help})")
    deprecated(p, "--t-min", "t_min", type=float)
    deprecated(p, "--t-max", "t_max", type=float)


def add_ema(p, *, sweep: bool = False) -> None:
    many = "; comma-separated to sweep several" if sweep else ""
    p.add_argument("--ema", default=None, help="EMA of a training checkpoint (e.g. hl1000, d0.99; 'raw' for the "
                   f"raw weights; default: the EMA of the checkpoint's sampling setting){many}")
    if sweep:
        deprecated(p, "--emas", "ema")


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
