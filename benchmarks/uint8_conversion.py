"""How much the float -> uint8 conversion moves a Frechet distance: ours, round(clip((x + 1) / 2 * 255)),
against clip(127.5 x + 128) truncated (the JiT / iMF code's) and clip((x + 1) / 2 * 255) truncated, on random
images and on a checkpoint's one-step samples, in any representation of the registry.

    python benchmarks/uint8_conversion.py [--checkpoint CKPT] [--repr offline] [--ref mnist-5k] \
        [--num-images 1000] [--json out.json]

Figures: for each source and conversion, the Frechet distance to the reference (the test split of a built-in
set, or a statistics file made with the same representation) and its change against ours, and the Frechet
distance between the images converted by ours and by each other rule (the shift itself).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, write_json  # noqa: E402
from pmf.data import BUILTIN, load_builtin  # noqa: E402
from pmf.evaluation.frechet import feature_stats, frechet_distance  # noqa: E402
from pmf.evaluation.reference import load_reference  # noqa: E402
from pmf.evaluation.representations import extract, get_representation  # noqa: E402

CONVERSIONS = {  # float [-1, 1] -> the uint8 grid, as float
    "ours: round((x+1)/2*255)": lambda x: ((x + 1) / 2 * 255).clamp(0, 255).round(),
    "trunc(127.5x+128)": lambda x: (127.5 * x + 128).clamp(0, 255).floor(),
    "trunc((x+1)/2*255)": lambda x: ((x + 1) / 2 * 255).clamp(0, 255).floor(),
}


def to_uint8(x: torch.Tensor, rule: str) -> np.ndarray:
    return CONVERSIONS[rule](x.double()).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def random_images(n: int, size: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Uniform noise in [-1, 1] (so every uint8 level is hit and no rule is favoured by clipping)."""
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def model_images(checkpoint: str, n: int, seed: int = 0) -> torch.Tensor:
    """The checkpoint's one-step samples before quantisation: image i has class i % classes and its own noise."""
    from pmf.checkpoints.load import load_checkpoint
    from pmf.sampling import image_noise, model_setting, sample_from

    net, setting = model_setting(load_checkpoint(checkpoint))
    cfg = net.config
    out = []
    with torch.no_grad():
        for lo in range(0, n, 100):
            idx = list(range(lo, min(n, lo + 100)))
            noise = image_noise(idx, (cfg.in_channels, cfg.input_size, cfg.input_size), seed=seed)
            labels = torch.tensor(idx) % cfg.num_classes
            out.append(sample_from(net, noise, labels, noise_scale=cfg.noise_scale, setting=setting).float())
    return torch.cat(out)


def measure(x: torch.Tensor, rep, ref_mu, ref_sigma) -> dict:
    stats = {rule: feature_stats(extract(rep, to_uint8(x, rule))["features"]) for rule in CONVERSIONS}
    ours = next(iter(CONVERSIONS))
    fd = {rule: frechet_distance(*s, ref_mu, ref_sigma) for rule, s in stats.items()}
    return {"fd_to_reference": fd, "change_against_ours": {r: fd[r] - fd[ours] for r in fd if r != ours},
            "fd_between_conversions": {r: frechet_distance(*stats[ours], *stats[r]) for r in fd if r != ours},
            "fraction_of_pixels_changed": {r: float((to_uint8(x, ours) != to_uint8(x, r)).mean())
                                           for r in fd if r != ours}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--repr", default="offline")
    p.add_argument("--ref", default="mnist-5k", help="built-in set (its test split) or a statistics file")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rep = get_representation(a.repr, **({"dataset": a.ref} if a.repr == "offline" and a.ref in BUILTIN else {}))
    if a.ref in BUILTIN:
        real = load_builtin(a.ref, split="test").images
        ref_mu, ref_sigma = feature_stats(extract(rep, real)["features"])
        size, channels = real.shape[1], real.shape[3]
    else:
        ref = load_reference(a.ref, rep)
        ref_mu, ref_sigma, size, channels = ref.mu, ref.sigma, ref.size or 256, 3
    result = {"cpu": cpu_model(), "threads": a.threads, "representation": rep.describe(), "reference": a.ref,
              "num_images": a.num_images,
              "random_uniform": measure(random_images(a.num_images, size, channels), rep, ref_mu, ref_sigma)}
    if a.checkpoint:
        result["checkpoint"] = a.checkpoint
        result["model_samples"] = measure(model_images(a.checkpoint, a.num_images), rep, ref_mu, ref_sigma)
    write_json(a.json, result)


if __name__ == "__main__":
    main()
