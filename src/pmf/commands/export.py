"""``pmf export``: write one EMA (or the raw weights) of a training checkpoint for inference, u-head only,
in the release's PyTorch format (.pt) or as safetensors."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export an EMA of a training checkpoint (release .pt or .safetensors)")
    p.add_argument("checkpoint", help="training checkpoint (checkpoints/step_XXXXXXXX.pt)")
    p.add_argument("out", help="output file: .safetensors, or .pt for the release format")
    p.add_argument("--ema", default=None, help="EMA name (e.g. hl1000, d0.99) or 'raw' (default: the first EMA)")
    p.add_argument("--format", choices=["release", "safetensors"], default=None, help="default: from the suffix")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import export_ema

    path = export_ema(args.checkpoint, args.out, ema=args.ema, fmt=args.format)
    print(f"wrote {path}")
    return 0
