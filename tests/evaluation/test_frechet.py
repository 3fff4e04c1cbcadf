"""Frechet distance: closed forms for Gaussians, identical sets, streaming statistics, the .npz format."""

import numpy as np
import pytest

from pmf.errors import PMFError
from pmf.evaluation.frechet import (
    StatsAccumulator,
    feature_stats,
    frechet_distance,
    frechet_distance_features,
    load_stats,
    save_stats,
)


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


@pytest.mark.parametrize("d", [1, 5, 64])
def test_closed_form_for_commuting_covariances(d):
    rng = np.random.default_rng(d)
    q = _rotation(d, 1)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    # same eigenvectors: tr((S1 S2)^1/2) = sum sqrt(a b), so d^2 = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_general_covariances_match_matrix_square_root():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    s1, s2 = x.T @ x / 40, y.T @ y / 40 + 0.1 * np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    # symmetric in its arguments
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)


def test_identical_sets_and_rank_deficient_features():
    f = np.random.default_rng(0).normal(size=(30, 100))  # N < D: singular covariance
    assert abs(frechet_distance_features(f, f)) < 1e-6
    assert frechet_distance_features(f, f + 1.0) == pytest.approx(100.0, rel=1e-6)  # a pure mean shift


def test_sample_estimate_approaches_closed_form():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(20000, 3)) * [1.0, 2.0, 0.5]
    b = rng.normal(size=(20000, 3)) * [2.0, 1.0, 0.5] + [1.0, 0, 0]
    expected = 1.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance_features(a, b) == pytest.approx(expected, abs=0.1)


def test_streaming_statistics_equal_batch_statistics():
    f = np.random.default_rng(1).normal(size=(57, 6)) * 3 + 2
    acc = StatsAccumulator(6)
    for chunk in np.array_split(f, 5):
        acc.update(chunk)
    acc.all_reduce()  # one process: no-op
    mu, sigma = acc.stats()
    ref_mu, ref_sigma = feature_stats(f)
    assert np.allclose(mu, ref_mu, atol=1e-12) and np.allclose(sigma, ref_sigma, atol=1e-10)


def test_stats_file_round_trip_and_errors(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    path = save_stats(tmp_path / "ref.npz", mu, sigma, meta="x")
    got = load_stats(path)
    assert np.array_equal(got[0], mu) and np.array_equal(got[1], sigma)
    np.savez(tmp_path / "jax.npz", ref_mu=mu, ref_sigma=sigma)  # the JAX release's key names
    assert np.array_equal(load_stats(tmp_path / "jax.npz")[1], sigma)
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(PMFError, match="'mu' and 'sigma'"):
        load_stats(tmp_path / "bad.npz")
    with pytest.raises(PMFError, match="not found"):
        load_stats(tmp_path / "missing.npz")
    with pytest.raises(PMFError, match="do not match"):
        frechet_distance(mu, sigma, mu[:2], sigma[:2, :2])
