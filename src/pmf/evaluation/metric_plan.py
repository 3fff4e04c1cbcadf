"""``pmf eval --metrics``: which metric needs which representation and reference, features computed once per
representation (every metric that reads a space shares one pass), and the scores with their records.

Metrics: ``fid`` and ``is`` (Inception, the paper's protocol), ``fd`` (the Frechet distance in ``--repr``) and
``fd:<repr>``, ``fdr`` (FDr^k over ``--fdr-repr``), ``precision`` and ``recall`` (k = 3, in ``--repr``), ``sfid``
(ADM's spatial Inception features) and ``nearest`` (the memorisation check)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import PMFError
from .feature_metrics import FDR6

KINDS = ("fid", "is", "fd", "fdr", "precision", "recall", "sfid", "nearest")
FIXED = {"fid": "inception", "is": "inception", "sfid": "inception"}  # metrics defined in one space
NEEDS_REF = ("fid", "fd", "fdr", "precision", "recall", "sfid")


@dataclass(frozen=True)
class MetricSpec:
    """One requested metric: ``key`` as spelled (the metrics.json key), its ``kind`` and representation(s)."""

    key: str
    kind: str
    reprs: tuple[str, ...]


def parse_metrics(spec: str, *, repr: str = "inception", fdr_reprs=tuple(FDR6), nearest_repr: str = "offline"
                  ) -> list[MetricSpec]:
    """``"fid,is,fd:dinov2,precision"`` -> specs; one PMFError line for an unknown or repeated metric."""
    out, seen = [], set()
    for key in (k.strip() for k in spec.split(",")):
        if not key:
            continue
        kind, _, space = key.partition(":")
        if kind not in KINDS or (space and kind != "fd"):
            raise PMFError(f"unknown metric {key!r}: use {', '.join(KINDS)} or fd:<representation> (e.g. fd:dinov2)")
        if key in seen:
            raise PMFError(f"metric {key!r} is asked for twice")
        seen.add(key)
        reprs = (FIXED[kind],) if kind in FIXED else tuple(fdr_reprs) if kind == "fdr" else \
            (nearest_repr,) if kind == "nearest" else (space or repr,)
        out.append(MetricSpec(key, kind, reprs))
    if not out:
        raise PMFError("--metrics names no metric")
    if any(s.kind in ("precision", "recall") for s in out):  # its package is checked before any feature is made
        from .feature_metrics import precision_recall_backend

        precision_recall_backend()
    return out


def needed(specs: list[MetricSpec]) -> dict[str, set[str]]:
    """Representation -> the outputs read from it ("features", "logits", "spatial"; "reference" when a
    reference is needed, "sample" when its reference feature sample is, "train" for the memorisation check)."""
    out: dict[str, set[str]] = {}
    for s in specs:
        for r in s.reprs:
            want = out.setdefault(r, set())
            want.add("features")
            want |= {"is": {"logits"}, "sfid": {"spatial", "reference"}, "nearest": {"train"},
                     "precision": {"reference", "sample"}, "recall": {"reference", "sample"}}.get(s.kind, set())
            if s.kind in NEEDS_REF:
                want.add("reference")
    return out


@dataclass
class Plan:
    """Loaded representations, their references and training features, and the metrics to score."""

    specs: list[MetricSpec]
    reps: dict  # name -> Representation
    refs: dict  # name -> pmf.evaluation.reference.Reference
    train: dict  # name -> Reference of the training images (memorisation check)
    fdr_norms: dict[str, float]
    train_images: Callable[[np.ndarray], np.ndarray] | None = None  # training images by index (the picture)

    def featurize(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output each representation is read for, of uint8 images [B, H, W, C], keyed "<repr>/<output>"."""
        from .representations import extract

        wanted = needed(self.specs)
        return {f"{name}/{key}": value for name, rep in self.reps.items()
                for key, value in extract(rep, images).items() if key in wanted[name]}

    def score(self, data: dict[str, np.ndarray], fetch: Callable[[np.ndarray], np.ndarray] | None = None,
              out_dir=None) -> dict:
        """Metrics of gathered features ``data`` (rows of ``featurize``): flat values keyed as requested (and
        ``inception_score``/``inception_score_std`` for ``is``) plus ``metrics``, each metric's record."""
        from .feature_metrics import fdr, precision_recall
        from .frechet import feature_stats, frechet_distance

        n = len(data["index"]) if "index" in data else len(next(iter(data.values())))
        flat, records, fd_cache, pr_cache = {}, {}, {}, {}

        def fd(name):
            if name not in fd_cache:
                ref = self.refs[name]
                fd_cache[name] = frechet_distance(*feature_stats(data[f"{name}/features"]), ref.mu, ref.sigma)
            return fd_cache[name]

        def pr(name):
            if name not in pr_cache:
                pr_cache[name] = precision_recall(data[f"{name}/features"], self.refs[name].features)
            return pr_cache[name]

        for s in self.specs:
            name = s.reprs[0]
            rec = {"representation": name if len(s.reprs) == 1 else list(s.reprs), "num_images": n}
            if s.kind in NEEDS_REF:
                refs = [self.refs[r] for r in s.reprs]
                rec["reference"] = refs[0].source
                rec["reference_images"] = refs[0].num_images
            if s.kind in ("fid", "fd"):
                value = fd(name)
            elif s.kind == "sfid":
                value = frechet_distance(*feature_stats(data[f"{name}/spatial"]), *self.refs[name].spatial)
            elif s.kind == "precision" or s.kind == "recall":
                value = pr(name)[0 if s.kind == "precision" else 1]
                rec["k"], rec["reference_sample"] = 3, len(self.refs[name].features)
            elif s.kind == "fdr":
                distances = {r: fd(r) for r in s.reprs}
                value = fdr(distances, self.fdr_norms)
                rec["distances"], rec["normalisers"] = distances, {r: self.fdr_norms[r] for r in s.reprs}
            elif s.kind == "is":
                from .inception import inception_score

                value, std = inception_score(data[f"{name}/logits"])
                flat["inception_score"], flat["inception_score_std"] = value, std
                rec["std"] = std
            else:
                value, extra = self._nearest(name, data, fetch, out_dir)
                rec.update(extra)
            flat[s.key] = float(value)
            records[s.key] = {"value": float(value), **rec}
        return {**flat, "metrics": records}

    def _nearest(self, name, data, fetch, out_dir) -> tuple[float, dict]:
        from .feature_metrics import nearest

        train = self.train[name]
        res = nearest(data[f"{name}/features"], train.features)
        rec = {"threshold": res.threshold, "percentile": res.percentile, "training_images": len(train.features),
               "training_source": train.source, "median_distance": float(np.median(res.distance))}
        if fetch is not None and self.train_images is not None and out_dir is not None:
            order = np.argsort(res.distance, kind="stable")[:16]
            pairs = fetch(data["index"][order]), self.train_images(train.index[res.index[order]])
            rec["picture"] = str(pair_picture(*pairs, res.distance[order], res.threshold, out_dir / "nearest.png"))
        return res.fraction, rec


def pair_picture(generated: np.ndarray, train: np.ndarray, distance: np.ndarray, threshold: float, path):
    """Closest pairs: generated images in the top row, their nearest training images below, a red frame where
    the distance is under the threshold."""
    from ..images import make_grid, save_image

    size = max(generated.shape[1], train.shape[1])
    gen, tr = (_rgb_at(a, size) for a in (generated, train))
    gen = np.stack([_frame(g) if d < threshold else g for g, d in zip(gen, distance)])
    save_image(make_grid(np.concatenate([gen, tr]), nrow=len(gen)), path, scale=max(1, 64 // size))
    return path


def _rgb_at(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = []
    for im in images:
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).convert("RGB")
        out.append(np.asarray(pil.resize((size, size), Image.NEAREST) if pil.width != size else pil))
    return np.stack(out)


def _frame(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[[0, -1], :] = (255, 0, 0)
    out[:, [0, -1]] = (255, 0, 0)
    return out
