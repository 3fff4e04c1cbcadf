"""Image folders in the ImageNet layout: one sub-folder per class (class index = position of the folder
name in sorted order), or loose images without class sub-folders (one class, named after the folder: an
unconditional model); any image format PIL reads, ADM center crop to the training resolution, RGB or gray."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import PMFError
from .labelled import LabelledImages
from .transforms import adm_center_crop, channels_of, to_gray, to_rgb

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".jfif"})


def scan_folder(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, int64 labels, class names) of an image folder; a clear error for a missing folder,
    a file instead of a folder, or a folder without images."""
    root = Path(root).expanduser()
    if not root.exists():
        raise PMFError(f"data folder not found: {str(root)!r}")
    if not root.is_dir():
        raise PMFError(f"data path {str(root)!r} is not a folder (expected one sub-folder of images per class, "
                       "a packed .pmfpack folder, an .npz file or a built-in name)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    comma = [c for c in classes if "," in c]
    if comma:  # class names travel with the model; pmf sample --classes separates them by commas
        raise PMFError(f"class folder {comma[0]!r} in {str(root)!r} has a comma in its name, which pmf sample "
                       "--classes could not select (commas separate classes there): rename it")
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        paths += found
        labels += [index] * len(found)
    if not paths:
        paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not paths:
            raise PMFError(f"no images found in {str(root)!r} (looked in it and in {len(classes)} class sub-folders "
                           f"for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return paths, np.zeros(len(paths), dtype=np.int64), [one_class_name(root)]
    return paths, np.asarray(labels, dtype=np.int64), classes


def root_images(root: str | Path) -> list[Path]:
    """The images directly in ``root``, outside every class sub-folder: not part of the data set."""
    root = Path(root).expanduser()
    return sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()) \
        if root.is_dir() else []


def left_out(root: str | Path) -> str:
    """The note that images at the top of ``root`` are left out ("" when there are none, or when the folder
    has no class sub-folder with images: then its loose images are the data, one class)."""
    n = len(root_images(root))
    if n and Path(scan_folder(root)[0][0]).parent == Path(root).expanduser():
        return ""
    return f"; left out {n} images at the top of the folder (only class sub-folders hold data)" if n else ""


def folder_channels(paths: list[Path], sample: int = 256) -> int:
    """1 when the images (up to ``sample`` of them, spread over the list) are all gray, else 3."""
    pick = paths if len(paths) <= sample else [paths[i] for i in np.linspace(0, len(paths) - 1, sample).astype(int)]
    modes = set()
    for p in pick:
        try:
            with Image.open(p) as im:
                modes.add(im.mode)
        except Exception:  # unreadable files are reported where they are decoded
            continue
    return channels_of(modes)


def one_class_name(root: Path) -> str:
    """The name of the one class of a folder of loose images (no class sub-folders): the folder's name."""
    return root.resolve().name or "images"


def load_image(path: str | Path, size: int, channels: int = 3) -> np.ndarray:
    """uint8 [size, size, channels]: decode fully (truncated files raise), convert to RGB (3) or gray (1),
    ADM center crop."""
    with Image.open(path) as im:
        im.load()
        return prepare_image(im, size, channels)


def prepare_image(im: Image.Image, size: int, channels: int = 3) -> np.ndarray:
    """A decoded image as uint8 [size, size, channels]: RGB (3) or gray (1), ADM center crop."""
    image = adm_center_crop(to_gray(im) if channels == 1 else to_rgb(im), size)
    return np.array(image, dtype=np.uint8).reshape(size, size, channels)  # a writable copy


class FolderDataset(LabelledImages):
    """Decodes images on the fly (use ``pmf pack`` to avoid decoding during long GPU runs). An unreadable
    file is replaced by the next readable one, counted in ``skipped`` of the worker that met it, and named in
    one warning per file for the whole run (a flag per file in shared memory, seen by every worker)."""

    def __init__(self, root: str | Path, size: int, channels: int = 3):
        if channels not in (1, 3):
            raise PMFError(f"image folders are read as RGB (3 channels) or gray (1), not {channels} channels")
        self.root, self.size, self.channels = Path(root), size, channels
        self.paths, self.labels, self.class_names = scan_folder(root)
        self.skipped = 0
        self.warned = torch.zeros(len(self.paths), dtype=torch.uint8).share_memory_()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.paths)):
            j = (index + offset) % len(self.paths)
            try:
                return torch.from_numpy(load_image(self.paths[j], self.size, self.channels)), int(self.labels[j])
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for damaged files
                self.skipped += 1
                if self.warned[j]:
                    continue
                self.warned[j] = 1
                print(f"warning: skipping unreadable image {self.paths[j]} ({type(err).__name__}: {err}); "
                      "`pmf pack` checks every file once and reports the count", file=sys.stderr)
        raise PMFError(f"none of the {len(self.paths)} images in {str(self.root)!r} could be read")
