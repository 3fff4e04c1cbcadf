"""``pmf refstats``: FID reference statistics (``.npz`` with ``mu``, ``sigma`` of Inception pool features) of an
image folder, a packed dataset, an array file or a built-in set, at a resolution with the ADM center crop.
Under ``torchrun`` each rank reads its own slice and the sums are all-reduced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data import BUILTIN
from ..data.transforms import adm_center_crop, to_rgb
from ..errors import PMFError
from ._args import add_batch_size, add_device, add_out, add_progress, add_workers

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}


class _Files(torch.utils.data.Dataset):
    """Image files decoded to RGB and ADM-center-cropped to ``size`` (uint8 [size, size, 3])."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        with Image.open(self.paths[i]) as im:
            im.load()
            return np.asarray(adm_center_crop(to_rgb(im), self.size), dtype=np.uint8)


class _Arrays(torch.utils.data.Dataset):
    """uint8 [N, H, W, C] arrays, ADM-center-cropped to ``size`` when their size differs."""

    def __init__(self, images: np.ndarray, size: int):
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        im = np.asarray(self.images[i])
        if im.shape[0] == im.shape[1] == self.size:
            return im
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
        out = np.asarray(adm_center_crop(pil, self.size), dtype=np.uint8)
        return out[..., None] if out.ndim == 2 else out


class _Images(torch.utils.data.Dataset):
    """The images of a training dataset of (image, label) pairs, as uint8 arrays."""

    def __init__(self, data: torch.utils.data.Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[i][0].numpy()


def image_source(spec: str, size: int, split: str = "train") -> torch.utils.data.Dataset:
    """Images of a built-in set (its own size rule), a ``datasets`` split (``hf:...``, a local parquet or
    save_to_disk path), an .npz/.npy array file, a .pmfpack folder or an image folder (all image files below it,
    sorted; RGB, ADM center crop)."""
    if spec in BUILTIN:
        from ..data import load_builtin

        return _Arrays(load_builtin(spec, size=size, split=split).images, size)
    from ..data.hf import HFImages, is_hf

    if is_hf(spec):  # its split is the spec's (hf:NAME:split=test)
        return _Images(HFImages(spec, size, 3))
    path = Path(spec).expanduser()
    if not path.exists():
        raise PMFError(f"{spec!r} is not a built-in dataset ({', '.join(BUILTIN)}), a file or a folder")
    if path.suffix in (".npz", ".npy"):
        obj = np.load(path, mmap_mode="r" if path.suffix == ".npy" else None)
        images = obj if path.suffix == ".npy" else obj["images"] if "images" in obj else None
        if images is None or images.dtype != np.uint8:
            raise PMFError(f"{str(path)!r} must hold uint8 images [N, H, W, C] (key 'images' in an .npz)")
        return _Arrays(images if images.ndim == 4 else images[..., None], size)
    if (path / "meta.json").is_file() and (path / "images.npy").is_file():  # a packed dataset
        return _Arrays(np.load(path / "images.npy", mmap_mode="r"), size)
    paths = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise PMFError(f"no images found below {str(path)!r}")
    return _Files(paths, size)


def reference_stats(dataset: torch.utils.data.Dataset, net, *, batch_size: int = 100, workers: int = 4,
                    limit: int | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, count) of Inception pool features over ``dataset`` (this rank's slice under torchrun)."""
    from ..distributed import rank_world, shard
    from ..frechet import StatsAccumulator
    from ..inception import inception_features

    rank, world = rank_world()
    n = min(len(dataset), limit or len(dataset))
    subset = torch.utils.data.Subset(dataset, list(shard(n, rank, world)))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=np.stack)
    acc = StatsAccumulator(2048)
    for images in tqdm(loader, desc="reference features", unit="batch", disable=not progress or rank != 0):
        acc.update(inception_features(net, images)[0])
    acc.all_reduce()
    mu, sigma = acc.stats()
    return mu, sigma, acc.n


def add_parser(sub) -> None:
    p = sub.add_parser("refstats", help="FID reference statistics (.npz: mu, sigma) of a dataset",
                       description="Inception pool statistics of an image folder, packed dataset, .npz/.npy "
                       "array file, datasets split or built-in set at --size pixels (ADM center crop), for "
                       "`pmf eval --ref`.")
    p.add_argument("source", help="image folder, .pmfpack folder, .npz/.npy file, built-in name, or a datasets "
                   "split: hf:OWNER/NAME[:split=test,image=COLUMN] or a local parquet / save_to_disk path")
    p.add_argument("--size", type=int, required=True, help="resolution the model generates (e.g. 256)")
    add_out(p, required=True, help="output .npz (required)")
    p.add_argument("--split", default="train", choices=["train", "test", "all"], help="split of a built-in set")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file (default: "
                   "$PMF_INCEPTION_WEIGHTS, then torch-fidelity's torch hub cache)")
    add_batch_size(p, default=100, help="images per Inception pass (default 100)")
    add_workers(p, default=4, help="image decoding processes (default 4)")
    add_device(p)
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch.distributed as dist

    from ..distributed import setup
    from ..frechet import save_stats
    from ..inception import find_weights, load_inception

    if args.size < 1:
        raise PMFError(f"--size must be positive, got {args.size}")
    from ._args import check_device, output_file

    args.device = check_device(args.device)
    output_file(args.out)
    created = not dist.is_initialized()
    info = setup(args.device)
    rank, device = info.rank, info.device
    created = created and dist.is_initialized()
    dataset = image_source(args.source, args.size, args.split)
    net = load_inception(args.inception_weights, device=device)
    mu, sigma, n = reference_stats(dataset, net, batch_size=args.batch_size, workers=args.workers,
                                   limit=args.limit, progress=not args.no_progress)
    if rank == 0:
        meta = {"source": args.source, "size": args.size, "split": args.split, "num_images": n,
                "inception_weights": find_weights(args.inception_weights).name, "crop": "adm_center_crop"}
        out = save_stats(args.out, mu, sigma, meta=json.dumps(meta))
        print(f"wrote reference statistics of {n} images at {args.size}px to {out}")
    if created:
        dist.destroy_process_group()
    return 0
