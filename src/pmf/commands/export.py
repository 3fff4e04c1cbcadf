"""``pmf export``: write one EMA (or the raw weights) of a training checkpoint for inference, u-head only,
in the release's PyTorch format (.pt) or as safetensors; or rewrite a sharded (DCP) training checkpoint as
one single-file training checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PMFError
from ..setting import sidecar_path
from ._args import add_checkpoint, add_ema, add_out, checkpoint_arg, legacy_positionals, output_file

# output suffix -> format written
SUFFIXES = {".pt": "release", ".pth": "release", ".safetensors": "safetensors"}


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export an EMA of a training checkpoint (release .pt or .safetensors), "
                       "or a sharded checkpoint folder as one training checkpoint file")
    add_checkpoint(p, required=False, random=False)
    add_out(p, help="output file: .safetensors, or .pt / .pth for the release format or --format checkpoint "
            "(required)")
    add_ema(p)
    p.add_argument("--format", choices=[*sorted(set(SUFFIXES.values())), "checkpoint"], default=None,
                   help="output format (default: from the suffix of --out); 'checkpoint': the whole training state "
                   "of a sharded checkpoint folder (model, EMAs, optimiser, step) as one step_XXXXXXXX.pt-style "
                   "file (--ema does not apply)")
    # the old form `pmf export CHECKPOINT OUT`
    p.add_argument("legacy", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import export_ema

    legacy_positionals(args)
    args.checkpoint = checkpoint_arg(args.checkpoint)
    suffix = Path(args.out).suffix.lower()
    output_file(args.out)  # a folder that cannot be made is a one-line error before any work
    if args.format == "checkpoint":
        from ..sharded_checkpoint import is_sharded_checkpoint
        from ..train_state import to_single_file

        if not is_sharded_checkpoint(args.checkpoint):
            raise PMFError(f"--format checkpoint rewrites a sharded checkpoint folder; {args.checkpoint!r} is not one")
        if suffix != ".pt":
            raise PMFError(f"--format checkpoint writes a .pt file, got {args.out!r}")
        path = to_single_file(args.checkpoint, args.out)
    else:
        if suffix not in SUFFIXES:
            raise PMFError(f"cannot tell the format of {args.out!r} from its suffix {suffix or '(none)'!r}; known "
                           f"suffixes: {', '.join(f'{k} ({v})' for k, v in SUFFIXES.items())}")
        if args.format is not None and args.format != SUFFIXES[suffix]:
            raise PMFError(f"--format {args.format} does not fit the suffix {suffix!r} (a {SUFFIXES[suffix]} file)")
        try:
            path = export_ema(args.checkpoint, args.out, ema=args.ema, fmt=args.format)
        except OSError as err:
            raise PMFError(f"cannot write {args.out!r}: {err.strerror or err}") from None
    print(f"wrote {path}" + (f" and {sidecar_path(path)} (its sampling setting)" if suffix != ".safetensors"
                             and args.format != "checkpoint" else ""))
    return 0
