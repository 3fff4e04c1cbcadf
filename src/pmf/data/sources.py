"""Image sources for statistics and evaluation: a built-in set, an ``.npz``/``.npy`` array file, a packed
dataset or an image folder, as a torch Dataset of uint8 [S, S, C] images (ADM center crop to S)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import PMFError
from .builtin import BUILTIN
from .transforms import adm_center_crop, to_rgb

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


def image_source(spec: str, size: int, split: str = "train") -> torch.utils.data.Dataset:
    """Images of a built-in set (its own size rule), an .npz/.npy array file, a .pmfpack folder or an image
    folder (all image files below it, sorted; RGB, ADM center crop)."""
    if spec in BUILTIN:
        from . import load_builtin

        return _Arrays(load_builtin(spec, size=size, split=split).images, size)
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
