"""Metrics of feature sets beyond the Frechet distance (pmf.evaluation.frechet): improved precision and recall
(Kynkaanniemi et al. 2019), FDr^k (the Frechet distance normalised per representation and averaged), and the
memorisation check (nearest training image of each generated one).

Precision and recall are torch-fidelity 0.4's implementation (``metric_prc``), which follows the published
definition: a sample lies on a set's manifold when it is within the distance from some member of the set to
that member's k-th nearest neighbour in the set (k = 3, itself excluded). It runs here in float64. The
memorisation check and FDr^k are written here: no maintained library computes them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import PMFError
from ..extras import needs

K = 3  # the neighbourhood size of the paper and of ADM's evaluator
# FDr-6 (Yang, Geng et al. 2026): the representations and the Frechet distance of the ImageNet validation
# images to the ImageNet 256 reference in each, from their public code.
FDR6 = {"inception": 1.68, "convnext_v2": 56.87, "dinov2": 14.19, "mae": 0.04, "siglip": 0.60, "clip": 5.60}


def _features(f, what: str) -> torch.Tensor:
    a = torch.as_tensor(np.asarray(f, dtype=np.float64))
    if a.ndim != 2 or len(a) <= K:
        raise PMFError(f"{what}: need features [N > {K}, D], got shape {list(a.shape)}")
    return a


def precision_recall_backend():
    """torch-fidelity's k-NN precision/recall, or the one-line MissingExtra naming its install command."""
    with needs("eval", "precision and recall need torch-fidelity"):
        from torch_fidelity.metric_prc import calculate_precision_recall_part
    return calculate_precision_recall_part


def precision_recall(generated, real, k: int = K, batch_size: int = 10_000) -> tuple[float, float]:
    """(precision, recall) of generated features [N, D] against real features [M, D]."""
    calculate_precision_recall_part = precision_recall_backend()
    g, r = _features(generated, "precision/recall (generated)"), _features(real, "precision/recall (reference)")
    if g.shape[1] != r.shape[1]:
        raise PMFError(f"precision/recall: generated features have {g.shape[1]} values, reference {r.shape[1]}")
    precision, recall = calculate_precision_recall_part(g, r, neighborhood=k, batch_size=batch_size)
    return float(precision), float(recall)


def fdr(distances: dict[str, float], norms: dict[str, float]) -> float:
    """FDr^k = (1/k) sum_i FD_i / FD_i(validation): ``distances`` and ``norms`` keyed by representation."""
    missing = sorted(set(distances) - set(norms))
    if missing or not distances:
        raise PMFError(f"FDr needs a normalising distance for every representation; missing: {missing or 'all'}")
    bad = [n for n in distances if not norms[n] > 0]
    if bad:
        raise PMFError(f"FDr: normalising distances must be positive, got {({n: norms[n] for n in bad})}")
    return float(np.mean([distances[n] / norms[n] for n in distances]))


@dataclass
class Nearest:
    """The memorisation check's result: each generated image's nearest training image and distance, the
    training set's own nearest-neighbour distances' ``percentile`` (the threshold) and the fraction below."""

    index: np.ndarray  # [N] nearest training image of each generated image
    distance: np.ndarray  # [N]
    threshold: float
    fraction: float
    percentile: float


def _nearest(a: torch.Tensor, b: torch.Tensor, exclude_self: bool, batch: int = 2048):
    """For each row of a: (distance, index) of its nearest row of b (itself excluded when a is b)."""
    dist, idx = [], []
    for lo in range(0, len(a), batch):
        d = torch.cdist(a[lo:lo + batch], b)  # (batch, M)
        if exclude_self:
            rows = torch.arange(lo, min(lo + batch, len(a)))
            d[rows - lo, rows] = float("inf")
        v, i = d.min(dim=1)
        dist.append(v)
        idx.append(i)
    return torch.cat(dist).numpy(), torch.cat(idx).numpy()


def nearest(generated, train, percentile: float = 1.0) -> Nearest:
    """The memorisation check: the fraction of generated images closer to their nearest training image than
    ``percentile`` % of training images are to their own nearest other training image."""
    g, t = _features(generated, "nearest (generated)"), _features(train, "nearest (training)")
    if g.shape[1] != t.shape[1]:
        raise PMFError(f"nearest: generated features have {g.shape[1]} values, training {t.shape[1]}")
    own, _ = _nearest(t, t, exclude_self=True)
    threshold = float(np.percentile(own, percentile))
    dist, idx = _nearest(g, t, exclude_self=False)
    return Nearest(idx, dist, threshold, float((dist < threshold).mean()), percentile)
