"""``pmf export``: write one EMA (or the raw weights) of a training checkpoint for inference, u-head only,
in the release's PyTorch format (.pt) or as safetensors; or rewrite a sharded (DCP) training checkpoint as
one single-file training checkpoint."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export an EMA of a training checkpoint (release .pt or .safetensors), "
                       "or a sharded checkpoint folder as one training checkpoint file")
    p.add_argument("checkpoint", help="training checkpoint: checkpoints/step_XXXXXXXX.pt, or the folder "
                   "checkpoints/step_XXXXXXXX written by --parallel fsdp/hsdp")
    p.add_argument("out", help="output file: .safetensors, or .pt for the release format or --format checkpoint")
    p.add_argument("--ema", default=None, help="EMA name (e.g. hl1000, d0.99) or 'raw' (default: the first EMA)")
    p.add_argument("--format", choices=["release", "safetensors", "checkpoint"], default=None,
                   help="default: from the suffix; 'checkpoint': the whole training state of a sharded checkpoint "
                   "(model, EMAs, optimiser, step) as one step_XXXXXXXX.pt-style file (--ema does not apply)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import export_ema

    if args.format == "checkpoint":
        from ..errors import PMFError
        from ..sharded_checkpoint import is_sharded_checkpoint, to_single_file

        if not is_sharded_checkpoint(args.checkpoint):
            raise PMFError(f"--format checkpoint rewrites a sharded checkpoint folder; {args.checkpoint!r} is not one")
        path = to_single_file(args.checkpoint, args.out)
    else:
        path = export_ema(args.checkpoint, args.out, ema=args.ema, fmt=args.format)
    print(f"wrote {path}")
    return 0
