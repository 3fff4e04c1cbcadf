"""``pmf sample``: one- or few-step samples from a checkpoint (ours or the release format) to PNGs."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import torch

from ..class_choice import parse_classes
from ..errors import PMFError
from ..export.onnx_runtime import is_onnx, onnx_checkpoint
from ..images import save_grid, save_image
from ..sampling import generate, image_labels, prepare_sampler
from ._args import (
    add_batch_size,
    add_common_model_args,
    add_guidance,
    add_num_images,
    add_out,
    add_progress,
    add_sampling_speed_args,
    add_seed,
    check_device,
    check_guidance,
    load_for_sampling,
    one_guidance,
    output_folder,
    sampling_setting,
)


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample images from a checkpoint in one (or a few) forward passes",
                       description="Write PNGs, grid.png and samples.npz (uint8 images, int64 labels). What an "
                       "earlier pmf sample wrote into the folder is removed first; other files stay. A "
                       "--checkpoint ending in .onnx (pmf export --out FILE.onnx) runs in onnxruntime on the CPU "
                       "with its recorded setting (docs/deploy.md).")
    add_common_model_args(p)
    add_sampling_speed_args(p)
    add_out(p, default="runs/sample", help="output folder (default runs/sample)")
    p.add_argument("--classes", default=None, help="classes to sample: indices, names or ranges, e.g. '0-9', "
                   "'1,207,360', 'cat,dog'; a class's name wins over its number, and a model whose class names are "
                   "numbers takes numbers only as names (docs/serve.md, Classes) (default: all classes of a model "
                   "with <= 100 classes, else 8 random ones)")
    p.add_argument("--per-class", type=int, default=None, help="images per class (default 8)")
    add_num_images(p, help="images in all instead of --per-class: the classes take turns (the first ones get "
                   "one more when the count does not divide evenly)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 1: one forward pass)")
    add_guidance(p)
    add_seed(p, help="image i uses its own generator from (seed, i) (default 0)")
    add_batch_size(p)
    add_progress(p)
    p.add_argument("--no-png", action="store_true", help="write only grid.png and samples.npz")
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
        if num_images < 1:
            raise PMFError(f"--num-images must be >= 1, got {num_images}")
        return [num_images // num_classes + (i < num_images % num_classes) for i in range(num_classes)]
    per_class = 8 if per_class is None else per_class
    if per_class < 1:
        raise PMFError(f"--per-class must be >= 1, got {per_class}")
    return [per_class] * num_classes


OWN_FILES = ("grid.png", "samples.npz", "sample_settings.json")
# Every name sample_name writes: six digits, then the class number or a class name's slug (its characters).
PNG_NAME = re.compile(r"\d{6}_[\w.-]+\.png")


def clear_old_samples(out) -> int:
    """Remove what an earlier ``pmf sample`` wrote into ``out`` (its numbered PNGs, grid, npz and settings), so
    that the folder never mixes two runs; other files stay. Returns the number of PNGs removed."""
    pngs = [p for p in out.iterdir() if PNG_NAME.fullmatch(p.name)]
    for p in pngs + [out / name for name in OWN_FILES]:
        p.unlink(missing_ok=True)
    return len(pngs)


def run(args) -> int:
    class_counts(1, args.per_class, args.num_images)  # the checks, before any model is loaded
    if args.batch_size < 1:
        raise PMFError(f"--batch-size must be >= 1, got {args.batch_size}")
    omega, t_min, t_max = one_guidance(args)
    check_guidance(omega=omega, t_min=t_min, t_max=t_max, steps=args.steps)
    onnx = is_onnx(args.checkpoint)  # an exported file run in onnxruntime (pmf.export.onnx_runtime)
    args.device = "cpu" if onnx and args.device is None else check_device(args.device)
    out = output_folder(args.out)
    loaded = onnx_checkpoint(args) if onnx else load_for_sampling(args, args.device)
    setting = sampling_setting(loaded, omega=omega, t_min=t_min, t_max=t_max, steps=args.steps)
    print(f"sampling: {setting.describe()}", flush=True)
    removed = clear_old_samples(out)
    if removed:
        print(f"removed {removed} sample PNGs of an earlier run from {out}", flush=True)
    model, cfg = loaded.model, loaded.model.config
    if not onnx:
        model = prepare_sampler(model, compile=args.compile, cuda_graphs=args.cuda_graphs)
    noise_scale = args.noise_scale if args.noise_scale is not None else cfg.noise_scale
    names = loaded.class_names if loaded.class_names and len(loaded.class_names) == cfg.num_classes else None
    # the names resolved on loading (ModelMetadata), as GET /info of pmf serve and the diffusers pipeline take them
    classes = parse_classes(args.classes, cfg.num_classes, loaded.meta.class_names)
    if classes is None:
        classes = list(range(cfg.num_classes)) if cfg.num_classes <= 100 else \
            image_labels(range(8), cfg.num_classes, seed=args.seed).tolist()
    counts = class_counts(len(classes), args.per_class, args.num_images)
    labels = torch.tensor([c for c, n in zip(classes, counts) for _ in range(n)], dtype=torch.long)
    images = []
    for idx, batch in generate(model, range(len(labels)), labels[: len(labels)], seed=args.seed,
                               batch_size=args.batch_size, setting=setting, noise_scale=noise_scale, device=args.device,
                               precision=args.precision, progress=not args.no_progress):
        images.append(batch.numpy())
        if not args.no_png:
            for i, im in zip(idx, batch.numpy()):
                save_image(im, out / sample_name(i, int(labels[i]), names))
    images = np.concatenate(images)
    np.savez(out / "samples.npz", images=images, labels=labels.numpy())
    # a row per class with --per-class; a square-ish grid in class order with --num-images
    save_grid(images, out / "grid.png", nrow=counts[0] if args.num_images is None else math.ceil(len(images) ** 0.5))
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    resolved = {"omega": setting.omega, "t_min": setting.t_min, "t_max": setting.t_max, "steps": setting.steps,
                "ema": setting.ema, "prediction": setting.prediction, "setting": setting.describe()}
    (out / "sample_settings.json").write_text(json.dumps({**settings, **resolved, "noise_scale": noise_scale,
                                                          "classes": classes,
                                                          "class_names": names}, indent=2))
    print(f"wrote {len(images)} images, grid.png and samples.npz to {out}")
    return 0
