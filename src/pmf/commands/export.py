"""``pmf export``: write one EMA (or the raw weights) of a training checkpoint for inference, u-head only,
in the release's PyTorch format (.pt) or as safetensors."""

from __future__ import annotations

from pathlib import Path

from ..errors import PMFError

# output suffix -> format written
SUFFIXES = {".pt": "release", ".pth": "release", ".safetensors": "safetensors"}


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export an EMA of a training checkpoint (release .pt or .safetensors)")
    p.add_argument("checkpoint", help="training checkpoint (checkpoints/step_XXXXXXXX.pt)")
    p.add_argument("out", help="output file: .safetensors, or .pt / .pth for the release format")
    p.add_argument("--ema", default=None, help="EMA name (e.g. hl1000, d0.99) or 'raw' (default: the first EMA)")
    p.add_argument("--format", choices=["release", "safetensors"], default=None, help="default: from the suffix")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import export_ema

    suffix = Path(args.out).suffix.lower()
    if suffix not in SUFFIXES:
        raise PMFError(f"cannot tell the format of {args.out!r} from its suffix {suffix or '(none)'!r}; known "
                       f"suffixes: {', '.join(f'{k} ({v})' for k, v in SUFFIXES.items())}")
    if args.format is not None and args.format != SUFFIXES[suffix]:
        raise PMFError(f"--format {args.format} does not fit the suffix {suffix!r} (a {SUFFIXES[suffix]} file)")
    path = export_ema(args.checkpoint, args.out, ema=args.ema, fmt=args.format)
    print(f"wrote {path}")
    return 0
