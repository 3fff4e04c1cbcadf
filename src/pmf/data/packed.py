"""Packed datasets: a one-time preprocessing step decodes an image folder into a ``.pmfpack`` folder
(``images.npy`` uint8 [N, H, W, 3] memory-mapped at training time, ``labels.npy`` int64 [N], ``meta.json``
with class names), so that decoding does not bound a GPU run. Also array files (``.npz``/``.npy``) and the
dispatcher ``open_training_data`` that turns any data spec into a dataset."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import PMFError
from .builtin import BUILTIN, ArrayData, load_builtin, resize_to, resized_note
from .folder import FolderDataset, folder_channels, load_image, scan_folder

PACK_SUFFIX = ".pmfpack"


def _decode(args: tuple[str, int, int]) -> np.ndarray | None:
    path, size, channels = args
    try:
        return load_image(path, size, channels)
    except Exception:  # unreadable or truncated: counted and skipped by the caller
        return None


def pack_folder(root: str | Path, out: str | Path, size: int, *, workers: int | None = None,
                progress: bool = True) -> dict:
    """Decode, RGB-convert (gray for a folder of gray images, as training on the folder reads it) and
    ADM-center-crop every image of ``root`` (an image folder, or a ``datasets`` spec: ``pmf.data.hf``) into
    ``out`` (a .pmfpack folder). Unreadable files are skipped; returns counts (``packed``, ``skipped``,
    ``skipped_files``) and ``channels``."""
    from tqdm.auto import tqdm

    from .hf import HFImages, is_hf

    if is_hf(str(root)):
        data = HFImages(str(root), size, 3)
        items = [f"{root}[{i}]" for i in range(len(data))]
        decoded = tqdm((data[i][0].numpy() for i in range(len(data))), total=len(data), desc="packing",
                       unit="img", disable=not progress)
        return _pack(decoded, items, data.labels, data.class_names, out, size, str(root), 3)
    paths, labels, classes = scan_folder(root)
    channels = folder_channels(paths)
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    jobs = [(str(p), size, channels) for p in paths]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_decode, jobs, chunksize=64)
            decoded = tqdm(results, total=len(jobs), desc="packing", unit="img", disable=not progress)
            return _pack(decoded, paths, labels, classes, out, size, str(Path(root).resolve()), channels)
    decoded = tqdm(map(_decode, jobs), total=len(jobs), desc="packing", unit="img", disable=not progress)
    return _pack(decoded, paths, labels, classes, out, size, str(Path(root).resolve()), channels)


def _pack(decoded, items: list, labels: np.ndarray, classes: list[str], out: str | Path, size: int,
          source: str, channels: int) -> dict:
    """Write the decoded images [size, size, channels] (None: unreadable, skipped) of ``items`` with their
    labels as a .pmfpack."""
    out = Path(out)
    if out.suffix != PACK_SUFFIX:
        out = out.with_name(out.name + PACK_SUFFIX)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "images.npy.partial"
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), size, size, channels))
    keep, skipped = _write(decoded, images, items)
    images.flush()
    if not keep:
        tmp.unlink()
        raise PMFError(f"none of the {len(items)} images in {source!r} could be read")
    if skipped:  # rewrite without the empty rows
        final = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8,
                                          shape=(len(keep), size, size, channels))
        for start in range(0, len(keep), 4096):
            final[start:start + 4096] = images[start:min(start + 4096, len(keep))]
        final.flush()
        del images, final
        tmp.unlink()
    else:
        del images
        os.replace(tmp, out / "images.npy")
    np.save(out / "labels.npy", labels[np.asarray(keep, dtype=np.int64)])
    meta = {"class_names": classes, "size": size, "channels": channels, "count": len(keep), "skipped": len(skipped),
            "skipped_files": [str(p) for p in skipped[:100]], "source": source}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return {"out": str(out), "packed": len(keep), "skipped": len(skipped), "skipped_files": meta["skipped_files"],
            "channels": channels}


def _write(decoded, images: np.ndarray, paths: list[Path]) -> tuple[list[int], list[Path]]:
    keep, skipped = [], []
    for i, im in enumerate(decoded):
        if im is None:
            skipped.append(paths[i])
        else:
            images[len(keep)] = im
            keep.append(i)
    return keep, skipped


def load_packed(path: str | Path) -> ArrayData:
    """A .pmfpack folder as ArrayData whose images are memory-mapped (read lazily)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        images = np.load(path / "images.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
    except (OSError, ValueError) as err:
        raise PMFError(f"{str(path)!r} is not a complete packed dataset ({err}); run `pmf pack` again") from None
    return ArrayData(images, labels.astype(np.int64), list(meta["class_names"]))


def load_arrays(path: str | Path) -> ArrayData:
    """``.npz`` with ``images`` uint8 [N, H, W, C] (or [N, H, W]), optional ``labels`` and ``class_names``;
    or an ``.npy`` of images (one class)."""
    path = Path(path)
    try:
        obj = np.load(path, allow_pickle=False, mmap_mode="r" if path.suffix == ".npy" else None)
    except (OSError, ValueError) as err:
        raise PMFError(f"cannot read array file {str(path)!r}: {err}") from None
    if path.suffix == ".npy":
        images, labels, names = obj, None, None
    else:
        if "images" not in obj:
            raise PMFError(f"{str(path)!r} has no 'images' array (it has {sorted(obj.keys())})")
        images = obj["images"]
        labels = obj["labels"] if "labels" in obj else None
        names = [str(n) for n in obj["class_names"]] if "class_names" in obj else None
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise PMFError(f"images in {str(path)!r} must be uint8, got {images.dtype}")
    labels = np.zeros(len(images), np.int64) if labels is None else np.asarray(labels, np.int64)
    if names is None:
        names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 1)]
    return ArrayData(images, labels, names)


def is_pack(path: Path) -> bool:
    """A packed data set: named ``*.pmfpack``, or a folder holding a pack's ``meta.json``."""
    return path.suffix == PACK_SUFFIX or (path / "meta.json").is_file()


def open_training_data(spec: str, size: int, channels: int = 3):
    """A dataset from a spec: a built-in name, a ``datasets`` split (``hf:...``, a local parquet or save_to_disk
    path: ``pmf.data.hf``), a .pmfpack folder, an .npz/.npy file or an image folder (read with ``channels``: 3
    RGB, 1 gray). Built-in sets and smaller square arrays are brought to ``size`` by ``RESIZE_RULE`` (recorded
    in ``ArrayData.resized``); a pack must already have it."""
    if spec in BUILTIN:
        return load_builtin(spec, size=size, split="train")
    from .hf import HFImages, is_hf

    if is_hf(spec):
        from .hf import parse_spec
        from .hf_stream import HFStream

        return HFStream(spec, size, channels) if parse_spec(spec).streaming else HFImages(spec, size, channels)
    path = Path(spec).expanduser()
    if is_pack(path):
        if not path.exists():
            raise PMFError(f"packed dataset not found: {str(path)!r}")
        return load_packed(path)
    if path.suffix in (".npz", ".npy"):
        if not path.is_file():
            raise PMFError(f"array file not found: {str(path)!r}")
        data = load_arrays(path)
        h = data.images.shape[1]
        if size and h < size and data.images.shape[2] == h:  # smaller square arrays are brought up to the model
            data = ArrayData(resize_to(np.asarray(data.images), size), data.labels, data.class_names,
                             resized_note(h, size))
        return data
    if not path.exists():
        raise PMFError(f"data {spec!r} not found: not a built-in dataset ({', '.join(BUILTIN)}), a file or a folder")
    return FolderDataset(path, size, channels)
