"""``pmf export``: write one EMA (or the raw weights) of a training checkpoint for inference, u-head only,
in the release's PyTorch format (.pt) or as safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PMFError
from ._args import add_checkpoint, add_ema, add_out, legacy_positionals

# output suffix -> format written
SUFFIXES = {".pt": "release", ".pth": "release", ".safetensors": "safetensors"}


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export an EMA of a training checkpoint (release .pt or .safetensors)")
    add_checkpoint(p, required=False, random=False)
    add_out(p, help="output file: .safetensors, or .pt / .pth for the release format (required)")
    add_ema(p)
    p.add_argument("--format", choices=sorted(set(SUFFIXES.values())), default=None,
                   help="output format (default: from the suffix of --out)")
    # the old form `pmf export CHECKPOINT OUT`
    p.add_argument("legacy", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import export_ema

    legacy_positionals(args)
    suffix = Path(args.out).suffix.lower()
    if suffix not in SUFFIXES:
        raise PMFError(f"cannot tell the format of {args.out!r} from its suffix {suffix or '(none)'!r}; known "
                       f"suffixes: {', '.join(f'{k} ({v})' for k, v in SUFFIXES.items())}")
    if args.format is not None and args.format != SUFFIXES[suffix]:
        raise PMFError(f"--format {args.format} does not fit the suffix {suffix!r} (a {SUFFIXES[suffix]} file)")
    path = export_ema(args.checkpoint, args.out, ema=args.ema, fmt=args.format)
    print(f"wrote {path}")
    return 0
