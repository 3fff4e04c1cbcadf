"""Evaluation (spec section 7): N samples with one seed per image index, sharded over ``torchrun`` ranks and
gathered on rank 0, scored by FID / IS (Inception, against ``.npz`` reference statistics) or by the offline
classifier score; grid sweeps over guidance scale, interval and EMA with a table and a plot."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import PMFError
from ..extras import pyplot
from ..images import save_image
from ..parallel.process import gather_rows, rank_world, shard
from ..sampling import SamplingSetting, check_precision, generate, noise_scale_of


@dataclass
class EvalSettings:
    """What is sampled: image i has label ``i % num_classes`` (50 per class for 50,000 ImageNet images) and
    noise from its own generator seeded by (seed, i), sampled with ``setting`` (guidance, steps, prediction:
    checked by its own rule)."""

    num_images: int = 50_000
    seed: int = 0
    setting: SamplingSetting = field(default_factory=lambda: SamplingSetting(source="the evaluation's settings"))
    noise_scale: float | None = None  # None: the model's
    batch_size: int = 64
    precision: str = "fp32"  # "bf16": sample under bf16 autocast

    def __post_init__(self) -> None:
        if self.num_images < 2:
            raise PMFError(f"num_images must be >= 2, got {self.num_images}")
        if self.batch_size < 1:
            raise PMFError(f"batch_size must be >= 1, got {self.batch_size}")
        check_precision(self.precision)

    def noise_scale_for(self, model) -> float:
        """The noise scale the images are drawn with: this one, or the model's where None."""
        return noise_scale_of(model.config, self.noise_scale)

    def to_dict(self) -> dict:
        """The record of metrics.json: the counts and the setting's omega, interval, steps and prediction."""
        s = self.setting
        return {"num_images": self.num_images, "seed": self.seed, "steps": s.steps, "omega": s.omega,
                "t_min": s.t_min, "t_max": s.t_max, "noise_scale": self.noise_scale, "batch_size": self.batch_size,
                "precision": self.precision, "prediction": s.prediction}


# ---- sampling and scoring ----------------------------------------------------------------------------------

def eval_labels(indices, num_classes: int) -> torch.Tensor:
    """Class ``i % num_classes`` for image i: balanced classes whatever the sharding."""
    return torch.as_tensor(list(indices), dtype=torch.long) % num_classes


def run_samples(model, settings: EvalSettings, *, featurize: Callable[[np.ndarray], dict] | None = None,
                keep_images: bool = False, png_dir: str | os.PathLike | None = None, device=None,
                progress: bool = True) -> dict[str, np.ndarray] | None:
    """Generate this rank's slice of the images, compute ``featurize(uint8 NHWC) -> {name: array}`` batch by
    batch, optionally write PNGs; returns on rank 0 all ranks' ``index``, ``label``, features (and ``images``)
    in index order, None on other ranks."""
    rank, world = rank_world()
    cfg = model.config
    idx = list(shard(settings.num_images, rank, world))
    labels = eval_labels(idx, cfg.num_classes)
    noise_scale = settings.noise_scale_for(model)
    out: dict[str, list] = {"index": [], "label": [], **({"images": []} if keep_images else {})}
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
    for batch_idx, images in generate(model, idx, labels, seed=settings.seed, batch_size=settings.batch_size,
                                      setting=settings.setting, noise_scale=noise_scale, device=device,
                                      progress=progress and rank == 0, precision=settings.precision):
        images = images.numpy()
        batch_labels = (np.asarray(batch_idx) % cfg.num_classes).astype(np.int64)
        out["index"].append(np.asarray(batch_idx, np.int64))
        out["label"].append(batch_labels)
        for name, value in (featurize(images) if featurize else {}).items():
            out.setdefault(name, []).append(np.asarray(value))
        if keep_images:
            out["images"].append(images)
        if png_dir is not None:
            for i, c, im in zip(batch_idx, batch_labels, images):
                save_image(im, Path(png_dir) / f"{i:06d}_class{c}.png")
    local = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}
    return gather_rows(local)


def fid_is(pool: np.ndarray, logits: np.ndarray, ref: str | os.PathLike) -> dict:
    """FID against the reference ``.npz`` and the Inception Score, from gathered Inception outputs."""
    from .frechet import feature_stats, frechet_distance, load_stats
    from .inception import inception_score

    mu, sigma = feature_stats(pool)
    ref_mu, ref_sigma = load_stats(ref)
    if ref_mu.shape != mu.shape:
        raise PMFError(f"reference statistics have {ref_mu.size} features, Inception gives {mu.size}")
    is_mean, is_std = inception_score(logits)
    return {"fid": frechet_distance(mu, sigma, ref_mu, ref_sigma), "inception_score": is_mean,
            "inception_score_std": is_std}


def regenerate(model, settings: EvalSettings, indices, device=None) -> np.ndarray:
    """The uint8 images of the given indices again (each depends only on its seed, index and label)."""
    labels = eval_labels(indices, model.config.num_classes)
    noise_scale = settings.noise_scale_for(model)
    return np.concatenate([im.numpy() for _, im in generate(
        model, [int(i) for i in indices], labels, seed=settings.seed, batch_size=settings.batch_size,
        setting=settings.setting, noise_scale=noise_scale, device=device, progress=False,
        precision=settings.precision)])


def evaluate(model, settings: EvalSettings, *, mode: str, ref: str | None = None, dataset: str = "mnist-5k",
             inception=None, plan=None, device=None, png_dir=None, npz_path=None, out_dir=None,
             progress: bool = True) -> dict | None:
    """Score one setting: ``mode`` "inception" (needs ``inception``, a loaded network, and ``ref``), "offline",
    or "metrics" (a ``pmf.evaluation.metric_plan.Plan``; ``out_dir`` receives its pictures). Returns the metrics with
    the settings on rank 0, None elsewhere."""
    if mode not in ("inception", "offline", "metrics"):
        raise PMFError(f"mode must be 'inception', 'offline' or 'metrics', got {mode!r}")
    settings = replace(settings, noise_scale=settings.noise_scale_for(model))  # the record says the value used
    featurize = plan.featurize if mode == "metrics" else None
    if mode == "inception":
        from .inception import inception_features

        def featurize(images):
            return dict(zip(("pool", "logits"), inception_features(inception, images)))

    data = run_samples(model, settings, featurize=featurize, keep_images=mode == "offline" or npz_path is not None,
                       png_dir=png_dir, device=device, progress=progress)
    if data is None:
        return None
    if npz_path is not None:
        np.savez(npz_path, images=data["images"], labels=data["label"])
    if mode == "inception":
        metrics = {"score": "inception", **fid_is(data["pool"], data["logits"], ref), "reference": str(ref)}
    elif mode == "metrics":
        metrics = {"score": "metrics", **plan.score(data, lambda idx: regenerate(model, settings, idx, device),
                                                    out_dir)}
    else:
        from .offline_score import offline_scores

        metrics = {"score": "offline", **offline_scores(data["images"], data["label"], dataset=dataset,
                                                        verbose=progress)}
    return {**metrics, "settings": settings.to_dict()}


# ---- sweeps ------------------------------------------------------------------------------------------------

def grid(omegas, intervals, emas) -> list[dict]:
    """Every combination of guidance scale, interval (t_min, t_max) and EMA name, EMA-major (one model load
    per EMA)."""
    return [{"ema": e, "omega": float(o), "t_min": float(a), "t_max": float(b)}
            for e, o, (a, b) in itertools.product(emas, omegas, intervals)]


def table(rows: list[dict], metric: str) -> str:
    """A Markdown table of the sweep, best (lowest ``metric``) marked."""
    best = min(range(len(rows)), key=lambda i: rows[i][metric]) if rows else -1
    cols = ["ema", "omega", "t_min", "t_max", metric] + [k for k in ("accuracy", "inception_score") if k in rows[0]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, r in enumerate(rows):
        cells = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |" + (" best" if i == best else ""))
    return "\n".join(lines)


def plot(rows: list[dict], metric: str, path: str | os.PathLike) -> Path:
    """``metric`` against the guidance scale, one line per (EMA, interval); saved as PNG."""
    plt = pyplot("the sweep's plot needs matplotlib")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for key in dict.fromkeys((r["ema"], r["t_min"], r["t_max"]) for r in rows):
        sel = sorted((r for r in rows if (r["ema"], r["t_min"], r["t_max"]) == key), key=lambda r: r["omega"])
        ax.plot([r["omega"] for r in sel], [r[metric] for r in sel], marker="o",
                label=f"ema {key[0]}, [{key[1]:g}, {key[2]:g}]")
    ax.set_xlabel("guidance scale omega")
    ax.set_ylabel(metric)
    if all(r[metric] > 0 for r in rows) and max(r[metric] for r in rows) > 10 * min(r[metric] for r in rows):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)




def best_row(rows: list[dict], metric: str) -> dict:
    ok = [r for r in rows if isinstance(r.get(metric), float) and math.isfinite(r[metric])]
    if not ok:
        raise PMFError(f"no finite {metric} in the sweep")
    return min(ok, key=lambda r: r[metric])


def progress_bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="setting", disable=not enabled or rank_world()[0] != 0)
