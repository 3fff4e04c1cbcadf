"""``pmf sample``: one- or few-step samples from a checkpoint (ours or the release format) to PNGs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model
from ..config import PRESETS
from ..errors import PMFError
from ..images import save_grid, save_image
from ..nn.model import PMFDiT, build_model
from ..sampling import PRECISIONS, generate, image_labels, prepare_sampler


def parse_classes(text: str | None, num_classes: int) -> list[int] | None:
    """'3,5,7' or '0-9' -> list of class indices (checked against the model), None for random classes."""
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-"))
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise PMFError(f"--classes takes numbers and ranges like '0-9' or '1,5,7', got {part!r}") from None
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise PMFError(f"class {bad[0]} out of range [0, {num_classes - 1}]")
    return out


def add_common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file, sharded checkpoint folder (--parallel fsdp/hsdp), hf:OWNER/REPO/FILE, URL, "
                   "or 'random' "
                   "(an untrained model of --arch, to try the pipeline)")
    p.add_argument("--arch", choices=list(PRESETS), help="architecture of a release-format file "
                   "(default: recorded in our checkpoints, inferred from the shapes otherwise)")
    p.add_argument("--ema", default=None, help="which EMA of a training checkpoint ('raw' for the raw weights; "
                   "default: the first EMA)")
    p.add_argument("--noise-scale", type=float, default=None, help="default: the preset's / recorded value")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def model_from_arg(checkpoint: str, *, arch: str | None, ema: str | None, device, seed: int = 0) -> PMFDiT:
    """The model named by ``--checkpoint`` (eval mode): a checkpoint we can read, or for ``random`` an
    untrained model of ``arch`` whose weights follow ``torch.manual_seed(seed)``."""
    if checkpoint == "random":
        if arch is None:
            raise PMFError("--checkpoint random needs --arch")
        torch.manual_seed(seed)
        return build_model(arch).to(device).eval()
    return load_model(checkpoint, arch=arch, ema=ema, device=device)


def add_sampling_speed_args(p: argparse.ArgumentParser) -> None:
    """Precision and compilation of the sampler (``pmf sample``, ``pmf eval``)."""
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="fp32 (default) or bf16 autocast (faster on GPUs and CPUs with AMX; images differ slightly)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network with frozen weights, one "
                   "graph per batch size (pays off for many images: compiling takes from seconds to minutes)")
    p.add_argument("--cuda-graphs", action="store_true", help="with --compile on a GPU: replay CUDA graphs")


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample images from a checkpoint in one (or a few) forward passes",
                       description="Write PNGs, grid.png and samples.npz (uint8 images, int64 labels).")
    add_common_model_args(p)
    add_sampling_speed_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", default=None, help="classes to sample, e.g. '0-9' or '1,207,360' "
                   "(default: all classes of a model with <= 100 classes, else 8 random ones)")
    p.add_argument("--per-class", type=int, default=8, help="images per class (default 8)")
    p.add_argument("--steps", type=int, default=1, help="sampling steps (default 1: one forward pass)")
    p.add_argument("--omega", type=float, default=1.0, help="guidance scale, an input of the network (default 1)")
    p.add_argument("--t-min", type=float, default=0.0, help="guidance interval start (default 0)")
    p.add_argument("--t-max", type=float, default=1.0, help="guidance interval end (default 1)")
    p.add_argument("--seed", type=int, default=0, help="image i uses its own generator from (seed, i)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-png", action="store_true", help="write only grid.png and samples.npz")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.per_class < 1:
        raise PMFError(f"--per-class must be >= 1, got {args.per_class}")
    model = model_from_arg(args.checkpoint, arch=args.arch, ema=args.ema, device=args.device, seed=args.seed)
    cfg = model.config
    model = prepare_sampler(model, compile=args.compile, cuda_graphs=args.cuda_graphs)
    noise_scale = args.noise_scale if args.noise_scale is not None else cfg.noise_scale
    classes = parse_classes(args.classes, cfg.num_classes)
    if classes is None:
        classes = list(range(cfg.num_classes)) if cfg.num_classes <= 100 else \
            image_labels(range(8), cfg.num_classes, seed=args.seed).tolist()
    labels = torch.tensor([c for c in classes for _ in range(args.per_class)], dtype=torch.long)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for idx, batch in generate(model, range(len(labels)), labels[: len(labels)], seed=args.seed,
                               batch_size=args.batch_size, steps=args.steps, omega=args.omega, t_min=args.t_min,
                               t_max=args.t_max, noise_scale=noise_scale, device=args.device,
                               precision=args.precision):
        images.append(batch.numpy())
        if not args.no_png:
            for i, im in zip(idx, batch.numpy()):
                save_image(im, out / f"{i:06d}_class{int(labels[i])}.png")
    images = np.concatenate(images)
    np.savez(out / "samples.npz", images=images, labels=labels.numpy())
    save_grid(images, out / "grid.png", nrow=args.per_class)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    (out / "sample_settings.json").write_text(json.dumps({**settings, "noise_scale": noise_scale,
                                                          "classes": classes}, indent=2))
    print(f"wrote {len(images)} images, grid.png and samples.npz to {out}")
    return 0
