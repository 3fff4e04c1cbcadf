"""``pmf export-generator``: the one-step generator of a checkpoint as a ``torch.export`` program (``.pt2``)."""

from __future__ import annotations

import json

import torch

from ..errors import PMFError
from ..export.generator import export_generator, save_generator
from ._args import add_out, load_sampler_arg, output_file
from ._config_flags import add_option_flags
from ._loading import add_common_model_args
from ._options import GeneratorExportOptions


def add_parser(sub) -> None:
    p = sub.add_parser("export-generator", help="export the one-step generator (u-head only) with torch.export",
                       description="Write a .pt2 program mapping (unit noise [B,C,H,W], labels [B], omega [B], "
                       "t_min [B], t_max [B]) to images on the [-1, 1] scale, NOT clipped (a one-step sample can "
                       "overshoot): clip to [-1, 1] before converting, as pmf.sampling.to_uint8 does. Also writes a "
                       "JSON file describing its inputs. Load it with torch.export.load(PATH).module().")
    add_common_model_args(p, onnx=False)
    add_out(p, required=True, help="output .pt2 file (required)")
    add_option_flags(p, GeneratorExportOptions)
    p.set_defaults(func=run)


def run(args) -> int:
    opts = GeneratorExportOptions.from_args(args)
    if not str(args.out).endswith(".pt2"):
        raise PMFError(f"--out must end in .pt2, got {str(args.out)!r}")
    out = output_file(args.out)
    sampler = load_sampler_arg(args)
    if sampler.onnx:
        raise PMFError(f"{args.checkpoint} is an ONNX export already; give the torch checkpoint it came from")
    model, setting, cfg, noise_scale = sampler.loaded.model, sampler.setting(), sampler.config, sampler.noise_scale
    program = export_generator(model, noise_scale=noise_scale, batch=opts.static_batch or 2,
                               dynamic_batch=opts.static_batch is None, prediction=setting.prediction)
    save_generator(program, out)
    shape = [cfg.in_channels, cfg.input_size, cfg.input_size]
    info = {"inputs": {"eps": ["B", *shape], "labels": ["B"], "omega": ["B"], "t_min": ["B"], "t_max": ["B"]},
            "output": ["B", *shape], "output_range": "the [-1, 1] scale, not clipped: clip before converting",
            "noise_scale": noise_scale, "num_classes": cfg.num_classes,
            "null_label": cfg.num_classes, "batch": opts.static_batch or "dynamic", "torch": torch.__version__,
            "model_config": cfg.to_dict(),
            # how to sample it: pass these omega / t_min / t_max per image for the checkpoint's own images
            "sampling_setting": setting.to_dict()}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0
