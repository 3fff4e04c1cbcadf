"""``pmf export-generator``: the one-step generator of a checkpoint as a ``torch.export`` program (``.pt2``)."""

from __future__ import annotations

import json

import torch

from ..errors import PMFError
from ..export.generator import export_generator, save_generator
from ._args import add_out, check_device, load_for_sampling, output_file, sampling_setting
from ._loading import add_common_model_args


def add_parser(sub) -> None:
    p = sub.add_parser("export-generator", help="export the one-step generator (u-head only) with torch.export",
                       description="Write a .pt2 program mapping (unit noise [B,C,H,W], labels [B], omega [B], "
                       "t_min [B], t_max [B]) to images on the [-1, 1] scale, NOT clipped (a one-step sample can "
                       "overshoot): clip to [-1, 1] before converting, as pmf.sampling.to_uint8 does. Also writes a "
                       "JSON file describing its inputs. Load it with torch.export.load(PATH).module().")
    add_common_model_args(p, onnx=False)
    add_out(p, required=True, help="output .pt2 file (required)")
    p.add_argument("--static-batch", type=int, default=None,
                   help="trace for this batch size only (default: any batch size)")
    p.set_defaults(func=run)


def run(args) -> int:
    out = output_file(args.out)
    args.device = check_device(args.device)
    if out.suffix != ".pt2":
        raise PMFError(f"--out must end in .pt2, got {str(out)!r}")
    if args.static_batch is not None and args.static_batch < 1:
        raise PMFError(f"--static-batch must be >= 1, got {args.static_batch}")
    loaded = load_for_sampling(args, args.device)
    model, setting = loaded.model, sampling_setting(loaded)
    cfg = model.config
    noise_scale = args.noise_scale if args.noise_scale is not None else cfg.noise_scale
    program = export_generator(model, noise_scale=noise_scale, batch=args.static_batch or 2,
                               dynamic_batch=args.static_batch is None, prediction=setting.prediction)
    save_generator(program, out)
    shape = [cfg.in_channels, cfg.input_size, cfg.input_size]
    info = {"inputs": {"eps": ["B", *shape], "labels": ["B"], "omega": ["B"], "t_min": ["B"], "t_max": ["B"]},
            "output": ["B", *shape], "output_range": "the [-1, 1] scale, not clipped: clip before converting",
            "noise_scale": noise_scale, "num_classes": cfg.num_classes,
            "null_label": cfg.num_classes, "batch": args.static_batch or "dynamic", "torch": torch.__version__,
            "model_config": cfg.to_dict(),
            # how to sample it: pass these omega / t_min / t_max per image for the checkpoint's own images
            "sampling_setting": setting.to_dict()}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0
