"""Reference statistics per representation: the ``.npz`` that ``pmf refstats --repr`` writes and ``pmf eval``
reads, features of a whole image source computed in one sharded pass, and ADM's reference batches.

File layout: ``<name>/mu``, ``<name>/sigma`` and ``<name>/features`` (a fixed sample of up to ``SAMPLE``
reference features, for precision/recall) per representation, ``inception/spatial_mu`` and
``inception/spatial_sigma`` for sFID, and ``meta`` (JSON: source, image size and, per representation, its
preprocessing and image count). With Inception, plain ``mu``/``sigma`` (and ADM's ``mu_s``/``sigma_s``) are
written too, so other FID tools read the file. ADM's batches (``arr_0`` images with ``mu``, ``sigma``, ``mu_s``,
``sigma_s``) and plain FID files (``mu``/``sigma``) are read as Inception statistics."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import PMFError

SAMPLE = 10_000  # reference features kept for precision/recall: the size of ADM's reference batches
IGNORED = ("weights_file",)  # the same weights under another file name are the same representation


@dataclass
class Reference:
    """One representation's reference: Gaussian statistics, optionally a feature sample (precision/recall),
    spatial statistics (sFID) or the images to compute missing features from (an ADM batch)."""

    name: str
    mu: np.ndarray
    sigma: np.ndarray
    source: str
    num_images: int | None = None
    features: np.ndarray | None = None
    index: np.ndarray | None = None  # the sample's image indices in the source
    spatial: tuple[np.ndarray, np.ndarray] | None = None
    preprocessing: dict | None = None
    size: int | None = None
    images: np.ndarray | None = field(default=None, repr=False)


def same_preprocessing(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in IGNORED} == {k: v for k, v in b.items() if k not in IGNORED}


def save_references(path, refs: list[Reference], meta: dict) -> Path:
    """Write the references of several representations into one ``.npz`` (atomically: a failed write leaves
    no file)."""
    arrays, reprs = {}, {}
    for r in refs:
        arrays[f"{r.name}/mu"], arrays[f"{r.name}/sigma"] = r.mu, r.sigma
        if r.features is not None:
            arrays[f"{r.name}/features"] = r.features.astype(np.float32)
        if r.spatial is not None:
            arrays[f"{r.name}/spatial_mu"], arrays[f"{r.name}/spatial_sigma"] = r.spatial
        if r.name == "inception":  # what every FID tool (and ADM's evaluator) reads
            arrays["mu"], arrays["sigma"] = r.mu, r.sigma
            if r.spatial is not None:
                arrays["mu_s"], arrays["sigma_s"] = r.spatial
        reprs[r.name] = {"preprocessing": r.preprocessing, "feature_dim": int(r.mu.size), "num_images": r.num_images}
    path = Path(path)
    path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, meta=json.dumps({**meta, "representations": reprs}), **arrays)
    os.replace(tmp, path)
    return path


def _open(path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise PMFError(f"reference file not found: {str(path)!r} (make one with `pmf refstats DATA --repr NAME`)")
    try:
        with np.load(path, allow_pickle=False) as d:
            return {k: d[k] for k in d.keys() if k != "arr_0"} | ({"arr_0": d["arr_0"]} if "arr_0" in d else {})
    except (OSError, ValueError) as err:
        raise PMFError(f"{str(path)!r} is not a readable .npz file ({err})") from None


def is_statistics_file(path) -> bool:
    """Whether ``path`` is an .npz of statistics (ours, FID's, JAX's or ADM's), not a file of images only."""
    p = Path(path).expanduser()
    if p.suffix != ".npz" or not p.is_file():
        return False
    with np.load(p) as d:
        keys = set(d.keys())
    return bool(keys & {"mu", "ref_mu"}) or any(k.endswith("/mu") for k in keys)


def load_reference(path, rep, *, size: int | None = None) -> Reference:
    """The reference of representation ``rep`` in ``path``; one PMFError line when the file holds another
    representation, another preprocessing or another image size."""
    d, src = _open(path), str(path)
    meta = json.loads(str(d["meta"])) if "meta" in d else {}
    names = sorted(k[:-3] for k in d if k.endswith("/mu"))
    if size is not None and meta.get("size") not in (None, size):
        raise PMFError(f"{src} holds statistics of {meta['size']}px images, the images evaluated are {size}px; "
                       f"make them at {size}px (`pmf refstats DATA --size {size} --repr {rep.name}`)")
    if rep.name in names:
        recorded = meta.get("representations", {}).get(rep.name, {})
        pre = recorded.get("preprocessing")
        if pre is not None and not same_preprocessing(pre, rep.preprocessing()):
            raise PMFError(f"{src} was made with {rep.name} preprocessed as {json.dumps(pre)}, this evaluation "
                           f"uses {rep.name} preprocessed as {json.dumps(rep.preprocessing())}")
        k = f"{rep.name}/"
        spatial = (d[k + "spatial_mu"], d[k + "spatial_sigma"]) if k + "spatial_mu" in d else None
        ref = Reference(rep.name, d[k + "mu"], d[k + "sigma"], src, recorded.get("num_images"),
                        d.get(k + "features"), spatial=spatial, preprocessing=pre, size=meta.get("size"))
    elif rep.name == "inception" and ("mu" in d or "ref_mu" in d):  # FID, JAX or ADM files
        from .frechet import load_stats

        mu, sigma = load_stats(path)
        spatial = (d["mu_s"], d["sigma_s"]) if "mu_s" in d else None
        ref = Reference("inception", mu, sigma, src, spatial=spatial, images=d.get("arr_0"), size=meta.get("size"))
    else:
        held = names or (["inception (plain mu/sigma)"] if "mu" in d or "ref_mu" in d else [])
        raise PMFError(f"{src} holds statistics of {', '.join(held) or 'no representation'}, not of {rep.name}; "
                       f"make them with `pmf refstats DATA --repr {rep.name}`")
    if ref.mu.shape != (rep.feature_dim,):
        raise PMFError(f"{src}: {rep.name} statistics have {ref.mu.size} features, {rep.name} gives {rep.feature_dim}")
    return ref


def sample_index(n: int, sample: int | None, seed: int = 0) -> np.ndarray:
    """The fixed, sorted image indices whose features are kept (all when ``sample`` is None or >= n)."""
    if sample is None or sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))


def source_references(dataset, reps: dict, *, source: str, sample: int | None = SAMPLE, batch_size: int = 100,
                      workers: int = 0, limit: int | None = None, progress: bool = True, size: int | None = None
                      ) -> dict[str, Reference] | None:
    """References of every representation in ``reps`` over an image ``dataset`` in one pass: each rank reads
    its slice; the float64 sums are all-reduced and the sampled features gathered on rank 0 (None elsewhere)."""
    from tqdm.auto import tqdm

    from ..parallel.process import gather_rows, rank_world, shard
    from .frechet import StatsAccumulator
    from .representations import extract

    rank, world = rank_world()
    n = min(len(dataset), limit or len(dataset))
    if n < 2:
        raise PMFError(f"{source}: need at least 2 images for reference statistics, got {n}")
    keep = np.zeros(n, bool)
    keep[sample_index(n, sample)] = True
    mine = list(shard(n, rank, world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size,
                                         num_workers=workers, collate_fn=np.stack)
    acc: dict[str, StatsAccumulator] = {}
    rows: dict[str, list] = {"index": []}
    done = 0
    for images in tqdm(loader, desc="reference features", unit="batch", disable=not progress or rank != 0):
        idx = np.asarray(mine[done:done + len(images)])
        done += len(images)
        rows["index"].append(idx[keep[idx]])
        for name, rep in reps.items():
            for key, f in extract(rep, images).items():
                if key == "logits":
                    continue
                acc.setdefault(f"{name}/{key}", StatsAccumulator(f.shape[1])).update(f)
                if key == "features":
                    rows.setdefault(name, []).append(f[keep[idx]].astype(np.float32))
    for a in acc.values():
        a.all_reduce()
    local = {k: np.concatenate(v) for k, v in rows.items()}
    gathered = gather_rows(local)
    if gathered is None:
        return None
    out = {}
    for name, rep in reps.items():
        spatial = acc[f"{name}/spatial"].stats() if f"{name}/spatial" in acc else None
        out[name] = Reference(name, *acc[f"{name}/features"].stats(), source, acc[f"{name}/features"].n,
                              gathered[name], gathered["index"], spatial, rep.preprocessing(), size)
    return out
