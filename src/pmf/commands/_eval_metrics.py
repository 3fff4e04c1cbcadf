"""``pmf eval --metrics`` and ``--images``: the flags, the representations and references a metric list
needs (loaded before any sampling, so a bad name or file fails at once), and the evaluation of given images
sharded over torchrun ranks as generated ones are."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..data import BUILTIN
from ..errors import PMFError
from ..evaluation.feature_metrics import FDR6
from ..evaluation.metric_plan import KINDS, Plan, needed, parse_metrics
from ..evaluation.reference import SAMPLE, is_statistics_file, load_reference, source_references

TRAIN_LIMIT = 50_000  # training images the memorisation check compares with, at most


def add_metric_args(p) -> None:
    p.add_argument("--metrics", default=None, help=f"comma-separated metrics: {', '.join(KINDS)}, fd:<repr> (e.g. "
                   "fid,is,fd:dinov2,precision,recall); default fid,is, or the offline score without Inception "
                   "weights. See docs/evaluation.md")
    p.add_argument("--repr", default="inception", help="representation of fd, precision and recall (default "
                   "inception; offline, pixels, dinov2, mae, clip, siglip, convnext_v2 or a timm model name)")
    p.add_argument("--images", default=None, help="evaluate given images instead of a checkpoint: an .npz with "
                   "'images' (uint8 [N, H, W, C]) or a folder of PNG/JPEG files")
    p.add_argument("--repr-weights", default=None, metavar="NAME=PATH[,...]", help="local weights file of a "
                   "timm representation (default: $PMF_<NAME>_WEIGHTS, then the Hugging Face and torch-hub caches)")
    p.add_argument("--fdr-repr", default=",".join(FDR6), help=f"representations of fdr (default FDr-6: "
                   f"{','.join(FDR6)})")
    p.add_argument("--fdr-norms", default=None, metavar="D1,D2,...", help="fdr's normalising distances, one per "
                   "--fdr-repr (default: the published ImageNet 256 validation distances of FDr-6)")
    p.add_argument("--train", default=None, help="training images of the memorisation check (nearest): a built-in "
                   "set, folder, .npz or .pmfpack (default: the built-in set of --dataset / the checkpoint)")
    p.add_argument("--nearest-repr", default=None, help="representation of nearest (default dinov2 when its "
                   "weights are here, else offline for a built-in set, else pixels)")


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def fdr_norms(args) -> dict[str, float]:
    reprs = _names(args.fdr_repr)
    if args.fdr_norms is None:
        unknown = [r for r in reprs if r not in FDR6]
        if unknown:
            raise PMFError(f"fdr has no published normalising distance for {', '.join(unknown)}; give --fdr-norms")
        return {r: FDR6[r] for r in reprs}
    values = [float(v) for v in _names(args.fdr_norms)]
    if len(values) != len(reprs):
        raise PMFError(f"--fdr-norms gives {len(values)} distances for {len(reprs)} --fdr-repr representations")
    return dict(zip(reprs, values))


def representation(name: str, args, device):
    from ..evaluation.representations import get_representation

    weights = dict(item.split("=", 1) for item in _names(args.repr_weights or "") if "=" in item)
    if name == "offline":
        return get_representation(name, device=device, dataset=args.dataset or "mnist-5k",
                                  verbose=not args.no_progress)
    if name == "inception":
        return get_representation(name, device=device, weights=args.inception_weights)
    if name == "pixels":
        return get_representation(name, device=device)
    return get_representation(name, device=device, weights=weights.get(name))


def nearest_repr(args) -> str:
    if args.nearest_repr:
        return args.nearest_repr
    from ..evaluation.representations.timm_models import find_weights

    try:
        find_weights("dinov2", "vit_large_patch14_dinov2.lvd142m", dict(
            item.split("=", 1) for item in _names(args.repr_weights or "") if "=" in item).get("dinov2"))
        return "dinov2"
    except PMFError:
        return "offline" if (args.train or args.dataset or "mnist-5k") in BUILTIN else "pixels"


def build_plan(args, size: int, device) -> Plan:
    """The metrics of ``args.metrics`` with their representations, references and training features loaded."""
    specs = parse_metrics(args.metrics, repr=args.repr, fdr_reprs=_names(args.fdr_repr),
                          nearest_repr=nearest_repr(args) if "nearest" in args.metrics else "offline")
    want = needed(specs)
    norms = fdr_norms(args) if any(s.kind == "fdr" for s in specs) else {}
    reps = {name: representation(name, args, device) for name in want}
    refs = references(args, {n: reps[n] for n, w in want.items() if "reference" in w}, size,
                      {n for n, w in want.items() if "sample" in w})
    if refs and any(s.kind == "sfid" for s in specs) and refs["inception"].spatial is None:
        raise PMFError(f"{refs['inception'].source} has no sFID statistics (ADM's mu_s/sigma_s); make them with "
                       "`pmf refstats DATA --repr inception` or use an ADM reference batch")
    train, fetch = {}, None
    if any("train" in w for w in want.values()):
        from ..data.sources import image_source

        source = args.train or args.dataset or "mnist-5k"
        data = image_source(source, size, "train")
        train = source_references(data, {n: reps[n] for n, w in want.items() if "train" in w}, source=source,
                                  sample=None, limit=TRAIN_LIMIT, batch_size=args.batch_size or 100,
                                  progress=not args.no_progress, size=size) or {}

        def fetch(index):
            return np.stack([data[int(i)] for i in index])
    return Plan(specs, reps, refs, train, norms, fetch)


def references(args, reps: dict, size: int, sample: set) -> dict:
    """Each representation's reference from ``--ref`` (a statistics file, an ADM batch, or images), or the
    test split of the built-in ``--dataset`` when no --ref is given."""
    from ..data.sources import _Arrays, image_source

    if not reps:
        return {}
    spec = args.ref
    if spec is None:
        if not getattr(args, "dataset_known", args.dataset is not None) and "offline" not in reps:
            raise PMFError(f"the metrics in {', '.join(reps)} need a reference: --ref FILE.npz (pmf refstats), an "
                           "ADM reference batch, or images (a folder, .npz or built-in set)")
        spec = args.dataset or "mnist-5k"
    kw = dict(batch_size=args.batch_size or 100, progress=not args.no_progress, size=size)
    if not is_statistics_file(spec):
        split = "test" if spec in BUILTIN else "train"
        return source_references(image_source(spec, size, split), reps, source=f"{spec} ({split} split)"
                                 if spec in BUILTIN else spec, **kw)
    out, missing = {}, {}
    for name, rep in reps.items():
        try:
            out[name] = load_reference(spec, rep, size=size)
        except PMFError:
            with np.load(spec) as d:
                if "arr_0" not in d:
                    raise
            missing[name] = rep  # an ADM batch: the images give every other representation
        if name in out and name in sample and out[name].features is None:
            if out[name].images is None:
                raise PMFError(f"{spec} keeps no reference features for precision/recall in {name}; remake it "
                               f"with `pmf refstats DATA --repr {name}`")
            missing[name] = rep
    if missing:
        with np.load(spec) as d:
            images = d["arr_0"]
        computed = source_references(_Arrays(images, images.shape[1]), missing, source=spec, sample=SAMPLE, **kw)
        for name, ref in (computed or {}).items():
            if name in out:  # keep the file's statistics, add the features of its images
                out[name].features, out[name].index = ref.features, ref.index
            else:
                out[name] = ref
    return out


def images_source(spec: str):
    """(uint8 [S, S, C] image dataset, S) of ``--images``: an .npz (``images``, or ADM's ``arr_0``) or a folder
    of image files (RGB, ADM center crop to the first file's size)."""
    from PIL import Image

    from ..data.sources import IMAGE_SUFFIXES, _Arrays, _Files

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".npz":
        with np.load(path) as d:
            key = next((k for k in ("images", "arr_0") if k in d), None)
            images = d[key] if key else None
        if images is None or images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise PMFError(f"{spec!r} must hold uint8 images [N, H, W, C] under 'images' (or ADM's 'arr_0')")
        images = images if images.ndim == 4 else images[..., None]
        if len(images) == 0 or images.shape[1] != images.shape[2] or images.shape[3] not in (1, 3):
            raise PMFError(f"{spec!r} holds {list(images.shape)}: need N > 0 square images with 1 or 3 channels")
        return _Arrays(images, images.shape[1]), images.shape[1]
    if not path.is_dir():
        raise PMFError(f"--images {spec!r} is neither an .npz file nor a folder of images")
    paths = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise PMFError(f"--images: no image files below {str(path)!r}")
    with Image.open(paths[0]) as im:
        size = min(im.size)
    return _Files(paths, size), size


def image_features(dataset, plan: Plan, batch_size: int, workers: int = 0, progress: bool = True):
    """``plan.featurize`` of every image, each rank its slice, gathered on rank 0 in index order (None
    elsewhere)."""
    import torch
    from tqdm.auto import tqdm

    from ..parallel.process import gather_rows, rank_world, shard

    rank, world = rank_world()
    mine = list(shard(len(dataset), rank, world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size,
                                         num_workers=workers, collate_fn=np.stack)
    rows: dict[str, list] = {"index": []}
    done = 0
    for images in tqdm(loader, desc="features", unit="batch", disable=not progress or rank != 0):
        rows["index"].append(np.asarray(mine[done:done + len(images)], np.int64))
        done += len(images)
        for key, value in plan.featurize(images).items():
            rows.setdefault(key, []).append(value)
    return gather_rows({k: np.concatenate(v) for k, v in rows.items()})


def describe(plan: Plan) -> dict:
    return {name: rep.describe() for name, rep in plan.reps.items()}


def summary(metrics: dict) -> str:
    parts = [f"{k} {v['value']:.4g} ({v['representation'] if isinstance(v['representation'], str) else 'fdr'})"
             for k, v in metrics["metrics"].items()]
    return "  ".join(parts)


def sweep_metric(plan, settings: int) -> str | None:
    """The metric a sweep minimises with --metrics: the first distance asked for."""
    key = next((s.key for s in plan.specs if s.kind in ("fid", "fd", "fdr", "sfid")), None)
    if key is None and settings > 1:
        raise PMFError("a sweep picks the setting with the lowest distance: add fid, fd, fdr or sfid to --metrics")
    return key


def run_images(args) -> int:
    """``pmf eval --images``: the metrics of given images; OUT/metrics.json on rank 0."""
    import torch
    import torch.distributed as dist

    from .. import __version__
    from ..parallel.process import setup
    from ._args import check_device, output_folder

    if args.checkpoint is not None:
        raise PMFError("give --checkpoint or --images, not both")
    args.device = check_device(args.device)
    args.metrics = args.metrics or "fid,is"
    out = Path(args.out)
    if out.is_file():
        raise PMFError(f"--out {args.out!r} is a file; give a folder (it is created if missing)")
    dataset, size = images_source(args.images)
    if args.num_images is not None:  # at least 2: pmf.commands._options.EvalOptions
        dataset = torch.utils.data.Subset(dataset, range(min(args.num_images, len(dataset))))
    created = not dist.is_initialized()
    info = setup(args.device)
    created = created and dist.is_initialized()
    t0 = time.time()
    plan = build_plan(args, size, info.device)
    data = image_features(dataset, plan, args.batch_size or 100, progress=not args.no_progress)
    if info.rank == 0:
        output_folder(out)
        metrics = plan.score(data, fetch=lambda idx: np.stack([dataset[int(i)] for i in idx]), out_dir=out)
        record = {"score": "metrics", **metrics, "images": args.images, "num_images": int(len(data["index"])),
                  "image_size": size, "representations": describe(plan), "world_size": info.world_size,
                  "device": str(info.device), "seconds": round(time.time() - t0, 1),
                  "args": {k: v for k, v in vars(args).items() if k != "func"}, "argv": sys.argv[1:],
                  "pixel_meanflow": __version__}
        (out / "metrics.json").write_text(json.dumps(record, indent=2))
        print(summary(metrics) + f"\nwrote {out / 'metrics.json'}")
    if created:
        dist.destroy_process_group()
    return 0
