"""What a training data set holds before any model is built: image count, classes, channels and image size,
so that ``pmf train`` can fit the model to the data (or say why it cannot)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .builtin import BUILTIN, load_builtin
from .folder import IMAGE_EXTENSIONS, left_out, scan_folder
from .packed import is_pack, open_training_data
from .transforms import channels_of

SIZE_SAMPLE = 256  # image headers read to decide whether a folder has one fixed size


@dataclass
class DataFacts:
    """``size`` None: the images are resized or cropped to the model (built-in sets, folders of mixed sizes)."""

    spec: str
    images: int | None  # None: a stream of unknown length
    classes: int
    channels: int
    size: int | None
    kind: str  # "built-in", "array", "pack", "folder"
    skipped: int = 0  # files in class folders that are not images (by their suffix)
    note: str = ""
    stored: int | None = None  # the stored image size of a built-in set or an array file (resized to the model)

    def describe(self) -> str:
        size = f"{self.size}x{self.size}" if self.size else self.note or "any size"
        classes = "one class (an unconditional model)" if self.classes == 1 else f"{self.classes} classes"
        count = "a stream of images" if self.images is None else f"{self.images:,} images"
        text = (f"{self.spec}: {count}, {classes}, {size}, "
                f"{'gray' if self.channels == 1 else f'{self.channels} channels'}")
        text += f"; skipped {self.skipped} files that are not images" if self.skipped else ""
        return text + (left_out(self.spec) if self.kind == "folder" else "")


def probe(spec: str) -> DataFacts:
    if spec in BUILTIN:
        data = load_builtin(spec, split="train")
        return DataFacts(spec, len(data.labels), data.num_classes, data.images.shape[3], None, "built-in",
                         note=f"{data.images.shape[1]}x{data.images.shape[2]} resized to the model",
                         stored=data.images.shape[1])
    from .hf import is_hf
    from .hf_stream import probe_hf

    if is_hf(spec):
        f = probe_hf(spec)
        return DataFacts(spec, f["images"], f["classes"], f["channels"], f["size"], "datasets",
                         note="" if f["size"] else "mixed sizes, center-cropped to the model")  # images None: a stream
    path = Path(spec).expanduser()
    if path.is_dir() and not is_pack(path):
        paths, labels, classes = scan_folder(path)
        others = sum(1 for name in classes for p in (path / name).rglob("*")
                     if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS and not p.name.startswith("."))
        pick = paths if len(paths) <= SIZE_SAMPLE else [paths[i] for i in
                                                          np.linspace(0, len(paths) - 1, SIZE_SAMPLE).astype(int)]
        sizes, modes = set(), set()
        for p in pick:
            try:
                with Image.open(p) as im:
                    sizes.add(im.size)
                    modes.add(im.mode)
            except Exception:  # unreadable files are reported once when training meets them
                continue
        fixed = next(iter(sizes)) if len(sizes) == 1 else None
        size = fixed[0] if fixed and fixed[0] == fixed[1] else None
        note = "" if size else ("non-square images, center-cropped to the model" if fixed else
                                "mixed sizes, center-cropped to the model")
        channels = channels_of(modes)  # a folder of gray images trains a gray model
        return DataFacts(spec, len(paths), len(classes), channels, size, "folder", others, note)
    data = open_training_data(spec, 0)
    classes = max(len(data.class_names), int(np.max(data.labels)) + 1 if len(data.labels) else 0)
    kind = "pack" if is_pack(path) else "array"  # a pack of a gray folder trains a gray model, as the folder
    return DataFacts(spec, len(data.labels), classes, data.images.shape[3], data.images.shape[1], kind,
                     stored=data.images.shape[1])
