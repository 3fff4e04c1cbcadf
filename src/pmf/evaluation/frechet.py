"""The Frechet distance between Gaussians fitted to feature sets (FID when the features are Inception's), and
the reference-statistics file format shared with the field (``.npz`` with ``mu`` and ``sigma``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import PMFError


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]) in float64 of features [N, D]; sigma is the unbiased covariance (N - 1)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise PMFError(f"need features [N >= 2, D] to fit a Gaussian, got shape {list(f.shape)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}) (spec section 7).

    tr((S1 S2)^{1/2}) equals the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    S1^{1/2} S2 S1^{1/2} (it is similar to S1 S2), which float64 ``eigh`` computes stably even for the
    rank-deficient covariances of small sample sets."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise PMFError(f"statistics do not match: mu {list(mu1.shape)} vs {list(mu2.shape)}, "
                       f"sigma {list(s1.shape)} vs {list(s2.shape)}")
    r1 = _sqrt_psd(s1)
    cross = np.linalg.eigvalsh(r1 @ ((s2 + s2.T) / 2) @ r1)
    tr_cross = np.sqrt(np.clip(cross, 0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_cross)
    return max(d, 0.0)


def frechet_distance_features(a, b) -> float:
    """Frechet distance between the Gaussians fitted to feature sets a [N, D] and b [M, D]."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **meta) -> Path:
    """Write ``mu``, ``sigma`` (float64) and optional scalar/string metadata to an ``.npz`` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {k: np.asarray(v) for k, v in meta.items()}
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **extra)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from a reference ``.npz``: keys ``mu``/``sigma`` (ours, ADM's, torch-fidelity's) or
    ``ref_mu``/``ref_sigma`` (the pMF JAX release)."""
    if str(path).startswith(("hf:", "http://", "https://")):
        from ..checkpoints.load import resolve

        path = resolve(path)  # downloaded once into the hub cache
    path = Path(path).expanduser()
    if not path.is_file():
        raise PMFError(f"reference statistics not found: {str(path)!r} (make them with `pmf refstats`, or see "
                       "docs/evaluation.md for the ImageNet files)")
    try:
        with np.load(path) as d:
            keys = next((k for k in (("mu", "sigma"), ("ref_mu", "ref_sigma")) if k[0] in d and k[1] in d), None)
            if keys is None:
                raise PMFError(f"{str(path)!r} has keys {sorted(d.keys())}, but reference statistics need "
                               "'mu' and 'sigma' (or the JAX release's 'ref_mu' and 'ref_sigma')")
            mu, sigma = np.asarray(d[keys[0]], np.float64), np.asarray(d[keys[1]], np.float64)
    except (OSError, ValueError) as err:
        if isinstance(err, PMFError):
            raise
        raise PMFError(f"{str(path)!r} is not a readable .npz file ({err})") from None
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise PMFError(f"{str(path)!r}: mu {list(mu.shape)} and sigma {list(sigma.shape)} do not fit together")
    return mu, sigma


class StatsAccumulator:
    """Streaming (mu, sigma) of features: float64 sums of x and x x^T, so shards can be summed across
    processes (``all_reduce``) without gathering the features themselves."""

    def __init__(self, dim: int):
        self.n, self.sum, self.outer = 0, np.zeros(dim), np.zeros((dim, dim))

    def update(self, features) -> None:
        f = np.asarray(features, dtype=np.float64)
        self.n += len(f)
        self.sum += f.sum(axis=0)
        self.outer += f.T @ f

    def all_reduce(self) -> None:
        """Sum the statistics of all processes (no-op in one process)."""
        import torch
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_world_size() > 1:
            dim = len(self.sum)
            flat = torch.from_numpy(np.concatenate([[self.n], self.sum, self.outer.ravel()]))
            if dist.get_backend() == "nccl":
                flat = flat.cuda()
            dist.all_reduce(flat)
            flat = flat.cpu().numpy()
            self.n, self.sum, self.outer = int(round(flat[0])), flat[1:dim + 1], flat[dim + 1:].reshape(dim, dim)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise PMFError(f"need at least 2 images for statistics, got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, (sigma + sigma.T) / 2
