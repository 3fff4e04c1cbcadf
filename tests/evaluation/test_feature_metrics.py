"""Precision, recall, the Frechet distance, FDr^k and the memorisation check against independent
implementations of their published definitions, written here with plain loops and numpy (not the package)."""

import importlib.util

import numpy as np
import pytest

from pmf.errors import PMFError
from pmf.evaluation.feature_metrics import FDR6, fdr, nearest, precision_recall
from pmf.evaluation.frechet import frechet_distance_features

# precision and recall come from torch-fidelity (the [eval] extra, which needs torchvision)
needs_fidelity = pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is None,
                                    reason="precision and recall need pip install 'pixel-meanflow[eval]'")



def _sets(seed=0, n=120, m=150, d=6):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(m, d))
    gen = rng.normal(size=(n, d)) * 0.7 + 0.5  # shifted and narrower: neither metric is 0 or 1
    return gen, real


def _radius(points, k):
    """Distance of each point to its k-th nearest other point."""
    out = []
    for i, p in enumerate(points):
        d = sorted(float(np.sqrt(((p - q) ** 2).sum())) for j, q in enumerate(points) if j != i)
        out.append(d[k - 1])
    return out


def _coverage(queries, points, k):
    """Fraction of queries inside the union of balls B(points_j, radius_j) (Kynkaanniemi et al. 2019, eq. 1-3)."""
    r = _radius(points, k)
    inside = [any(np.sqrt(((q - p) ** 2).sum()) <= rj for p, rj in zip(points, r)) for q in queries]
    return sum(inside) / len(queries)


@needs_fidelity
@pytest.mark.parametrize("seed", [0, 1])
def test_precision_recall_match_the_definition(seed):
    gen, real = _sets(seed)
    precision, recall = precision_recall(gen, real)
    want_p, want_r = _coverage(gen, real, 3), _coverage(real, gen, 3)
    assert abs(precision - want_p) <= 1e-6 and abs(recall - want_r) <= 1e-6
    assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95  # the sets separate the two
    assert precision_recall(real, real) == (1.0, 1.0)


def test_frechet_distance_of_feature_sets_matches_the_definition():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    gen, real = _sets(2, d=5)
    mu1, mu2 = gen.sum(0) / len(gen), real.sum(0) / len(real)
    s1 = sum(np.outer(x - mu1, x - mu1) for x in gen) / (len(gen) - 1)
    s2 = sum(np.outer(x - mu2, x - mu2) for x in real) / (len(real) - 1)
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
    assert abs(frechet_distance_features(gen, real) - want) <= 1e-6


def test_fdr_is_the_mean_of_normalised_distances():
    distances = {"inception": 3.36, "dinov2": 7.095, "clip": 11.2}
    want = (3.36 / 1.68 + 7.095 / 14.19 + 11.2 / 5.60) / 3
    assert fdr(distances, FDR6) == pytest.approx(want, rel=1e-12)
    assert fdr({n: v for n, v in FDR6.items()}, FDR6) == pytest.approx(1.0)  # validation images score 1
    with pytest.raises(PMFError, match="missing: \\['pixels'\\]"):
        fdr({"pixels": 1.0}, FDR6)


def test_nearest_flags_copies_and_not_fresh_samples():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 8))
    fresh = rng.normal(size=(50, 8))
    copies = train[:10] + 1e-4 * rng.normal(size=(10, 8))
    res = nearest(np.concatenate([copies, fresh]), train)
    own = [min(np.sqrt(((t - u) ** 2).sum()) for j, u in enumerate(train) if j != i) for i, t in enumerate(train)]
    assert res.threshold == pytest.approx(np.percentile(own, 1.0), rel=1e-12)
    assert np.array_equal(res.index[:10], np.arange(10))
    want = np.mean([min(np.sqrt(((g - t) ** 2).sum()) for t in train) < res.threshold
                    for g in np.concatenate([copies, fresh])])
    assert res.fraction == pytest.approx(want) and res.fraction >= 10 / 60
    with pytest.raises(PMFError, match="values"):
        nearest(fresh, train[:, :4])
