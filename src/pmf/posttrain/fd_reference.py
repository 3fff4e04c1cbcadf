"""Reference statistics of FD-loss: the real data's feature mean and covariance in one representation (and per
class, for per-class statistics), read from a file (``--fd-ref``) or computed from the run's training data,
cached and written into the run folder. A file records its representation, preprocessing and image size; a
file of another one is refused in one line before any work."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import PMFError
from ..parallel import process as D


@dataclass
class Reference:
    """mu [K, D], sigma [K, D, D] (K = 1: class-agnostic; else one row per class), float64, and where they came
    from."""

    mu: torch.Tensor
    sigma: torch.Tensor
    source: str

    @property
    def classes(self) -> int:
        return self.mu.shape[0]


def read_reference(path: str | os.PathLike, rep, image_size: int, classes: int = 0) -> Reference:
    """The statistics of ``path`` (``pmf refstats``'s layout, or a plain FID file for Inception) for representation
    ``rep`` at generated-image size ``image_size`` (one row per class with ``classes`` > 0): refused in one line
    when the file holds another representation, preprocessing or image size, or lacks the per-class rows."""
    from ..evaluation.reference import load_reference

    if not Path(path).expanduser().is_file():
        raise PMFError(f"--fd-ref {str(path)!r} not found (make one with `pmf refstats DATA --repr {rep.name}`, or "
                       "leave --fd-ref out to compute it from --data)")
    ref = load_reference(path, rep, size=image_size)
    if not classes:
        return Reference(torch.from_numpy(np.asarray(ref.mu, np.float64))[None],
                         torch.from_numpy(np.asarray(ref.sigma, np.float64))[None], str(path))
    with np.load(Path(path).expanduser()) as d:
        key = f"{rep.name}/class_"
        if key + "mu" not in d or len(d[key + "mu"]) != classes:
            raise PMFError(f"--fd-ref {str(path)!r} has no {rep.name} statistics of {classes} classes for "
                           "--fd-per-class; leave --fd-ref out to compute them from --data")
        mu, sigma = d[key + "mu"], d[key + "sigma"]
    return Reference(torch.from_numpy(np.asarray(mu, np.float64)), torch.from_numpy(np.asarray(sigma, np.float64)),
                     str(path))


def write_reference(path: Path, sums: dict, rep, image_size: int, data_spec: str) -> Path:
    """Write the statistics of float64 sums (``n`` [K], ``s`` [K, D], ``o`` [K, D, D] per class row) in
    ``pmf refstats``'s layout (read by ``pmf eval`` too), with ``NAME/class_mu``, ``NAME/class_sigma`` when K > 1."""
    n, s, o = sums["n"], sums["s"], sums["o"]
    if (n < 2).any():
        raise PMFError(f"--data {data_spec!r} has fewer than 2 images in class(es) "
                       f"{(n < 2).nonzero()[0][:10].tolist()}: no reference statistics")
    cmu = s / n[:, None]
    csig = (o - n[:, None, None] * np.einsum("ki,kj->kij", cmu, cmu)) / (n[:, None, None] - 1)
    N, S, O = n.sum(), s.sum(0), o.sum(0)
    mu = S / N
    sigma = (O - N * np.outer(mu, mu)) / (N - 1)
    arrays = {f"{rep.name}/mu": mu, f"{rep.name}/sigma": (sigma + sigma.T) / 2}
    if len(n) > 1:
        arrays.update({f"{rep.name}/class_mu": cmu, f"{rep.name}/class_sigma": (csig + csig.transpose(0, 2, 1)) / 2,
                       f"{rep.name}/class_count": n})
    meta = {"source": data_spec, "size": image_size, "representations": {rep.name: {
        "preprocessing": rep.preprocessing(), "feature_dim": int(mu.size), "num_images": int(N)}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, meta=json.dumps(meta), **arrays)
    os.replace(tmp, path)  # never half-written
    return path


def _chunks(data, limit: int | None, batch: int, rank: int, world: int):
    """(uint8 images [b, H, W, C], labels [b]) of this rank's share of the first ``limit`` images, in order."""
    n = len(data.labels) if limit is None else min(limit, len(data.labels))
    mine = np.array(list(D.shard(n, rank, world)), dtype=np.int64)
    for start in range(0, len(mine), batch):
        idx = mine[start:start + batch]
        if hasattr(data, "images"):
            yield torch.from_numpy(np.asarray(data.images[idx])), torch.from_numpy(np.asarray(data.labels[idx]))
        else:
            items = [data[int(i)] for i in idx]
            yield torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items])


@torch.no_grad()
def reference_sums(reps: list, data, mcfg, device, *, limit: int | None, classes: int, batch: int = 250) -> list:
    """Per representation, float64 sums over the data (n [K], s [K, D], o [K, D, D]) summed over all ranks."""
    from ..data.order import to_model_input

    rank, world = D.rank_world()
    acc = [dict(n=torch.zeros(classes, dtype=torch.float64, device=device),
                s=torch.zeros(classes, r.feature_dim, dtype=torch.float64, device=device),
                o=torch.zeros(classes, r.feature_dim, r.feature_dim, dtype=torch.float64, device=device))
           for r in reps]
    for images, labels in _chunks(data, limit, batch, rank, world):
        x = to_model_input(images, mcfg, device)
        y = labels.to(device) if classes > 1 else torch.zeros(len(labels), dtype=torch.long, device=device)
        for rep, a in zip(reps, acc):
            f = rep(x).double()  # (b, D)
            for c in torch.unique(y).tolist():
                fc = f[y == c]
                a["n"][c] += len(fc)
                a["s"][c] += fc.sum(0)
                a["o"][c] += fc.T @ fc
    out = []
    for a in acc:
        for v in a.values():
            if world > 1:
                torch.distributed.all_reduce(v)
        out.append({k: v.cpu().numpy() for k, v in a.items()})
    return out


def cache_key(data_spec: str, rep, image_size: int, limit: int | None, classes: int) -> str:
    """A file name for the cached statistics of (data, representation, preprocessing, image size, image count,
    per-class rows)."""
    where = str(Path(data_spec).expanduser().resolve()) if Path(data_spec).expanduser().exists() else data_spec
    text = json.dumps([where, rep.name, rep.preprocessing(), image_size, limit, classes], sort_keys=True,
                      default=str)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in rep.name)
    return f"{safe}-{image_size}px-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"
