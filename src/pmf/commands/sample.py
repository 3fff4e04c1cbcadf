"""``pmf sample``: one- or few-step samples from a checkpoint (ours or the release format) to PNGs."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import torch

from ..class_choice import fitting_names, parse_classes
from ..errors import PMFError
from ..folder_layout import SampleFolder
from ..images import save_grid, save_image
from ..sampling import image_labels
from ._args import (
    add_common_model_args,
    add_guidance,
    add_out,
    add_progress,
    check_sampling_flags,
    load_sampler_arg,
    one_guidance,
    output_folder,
)
from ._config_flags import add_option_flags
from ._options import SampleOptions


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample images from a checkpoint in one (or a few) forward passes",
                       description="Write PNGs, grid.png and samples.npz (uint8 images, int64 labels). What an "
                       "earlier pmf sample wrote into the folder is removed first; other files stay. A "
                       "--checkpoint ending in .onnx (pmf export --out FILE.onnx) runs in onnxruntime on the CPU "
                       "with its recorded setting (docs/deploy.md).")
    add_common_model_args(p)
    add_out(p, default="runs/sample", help="output folder (default runs/sample)")
    add_guidance(p)
    add_progress(p)
    add_option_flags(p, SampleOptions)
    p.set_defaults(func=run)


def sample_name(index: int, label: int, names: list[str] | None) -> str:
    """The PNG name of sample ``index``: its class name where the model records names, else its number."""
    if not names:
        return f"{index:06d}_class{label}.png"
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in names[label])  # what PNG_NAME matches
    return f"{index:06d}_{slug}.png"


def class_counts(num_classes: int, per_class: int | None, num_images: int | None) -> list[int]:
    """Images per class for ``--per-class`` or ``--num-images`` (not both; neither: 8 per class)."""
    if per_class is not None and num_images is not None:
        raise PMFError("give --per-class or --num-images, not both")
    if num_images is not None:
        return [num_images // num_classes + (i < num_images % num_classes) for i in range(num_classes)]
    return [8 if per_class is None else per_class] * num_classes


# Every name sample_name writes: six digits, then the class number or a class name's slug (its characters).
PNG_NAME = re.compile(r"\d{6}_[\w.-]+\.png")


def clear_old_samples(out) -> int:
    """Remove what an earlier ``pmf sample`` wrote into ``out`` (its numbered PNGs, grid, npz and settings), so
    that the folder never mixes two runs; other files stay. Returns the number of PNGs removed."""
    pngs = [p for p in out.iterdir() if PNG_NAME.fullmatch(p.name)]
    for p in pngs + list(SampleFolder(out).own_files):
        p.unlink(missing_ok=True)
    return len(pngs)


def run(args) -> int:
    opts = SampleOptions.from_args(args)  # the ranges, before any model is loaded
    class_counts(1, opts.per_class, opts.num_images)
    omega, t_min, t_max = one_guidance(args)
    check_sampling_flags(omega=omega, t_min=t_min, t_max=t_max)
    sampler = load_sampler_arg(args)
    setting = sampler.setting(omega=omega, t_min=t_min, t_max=t_max, steps=opts.steps)
    loaded, cfg = sampler.loaded, sampler.config
    names = fitting_names(loaded.class_names, cfg.num_classes)
    # the names resolved on loading (ModelMetadata), as GET /info of pmf serve and the diffusers pipeline take them;
    # checked before the folder is made or an earlier run's samples are removed
    classes = parse_classes(opts.classes, cfg.num_classes, loaded.meta.class_names)
    if classes is None:
        classes = list(range(cfg.num_classes)) if cfg.num_classes <= 100 else \
            image_labels(range(8), cfg.num_classes, seed=opts.seed).tolist()
    counts = class_counts(len(classes), opts.per_class, opts.num_images)
    out = output_folder(args.out)
    print(f"sampling: {setting.describe()}", flush=True)
    removed = clear_old_samples(out)
    if removed:
        print(f"removed {removed} sample PNGs of an earlier run from {out}", flush=True)
    labels = torch.tensor([c for c, n in zip(classes, counts) for _ in range(n)], dtype=torch.long)
    images = []
    for idx, batch in sampler.generate(range(len(labels)), labels, seed=opts.seed, batch_size=opts.batch_size,
                                       setting=setting, progress=not args.no_progress):
        images.append(batch.numpy())
        if not opts.no_png:
            for i, im in zip(idx, batch.numpy()):
                save_image(im, out / sample_name(i, int(labels[i]), names))
    images = np.concatenate(images)
    np.savez(SampleFolder(out).npz, images=images, labels=labels.numpy())
    # a row per class with --per-class; a square-ish grid in class order with --num-images
    save_grid(images, SampleFolder(out).grid,
              nrow=counts[0] if opts.num_images is None else math.ceil(len(images) ** 0.5))
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    resolved = {"omega": setting.omega, "t_min": setting.t_min, "t_max": setting.t_max, "steps": setting.steps,
                "ema": setting.ema, "prediction": setting.prediction, "setting": setting.describe(),
                "device": sampler.device}
    SampleFolder(out).settings.write_text(json.dumps({**settings, **resolved, "noise_scale": sampler.noise_scale,
                                                      "classes": classes, "class_names": names}, indent=2))
    print(f"wrote {len(images)} images, grid.png and samples.npz to {out}")
    return 0
