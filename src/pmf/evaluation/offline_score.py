"""An offline quality score for models trained on a built-in dataset (no Inception weights needed).

A small CNN, trained by this project on the built-in set's train split (seeded, cached after the first run),
judges generated images two ways: (a) the fraction recognised as their requested class, and (b) the Frechet
distance between its penultimate features of the generated images and of the held-out real test images.
Two baselines are scored the same way with the same labels and count: real training images (the floor a
perfect generator would reach) and per-class mean images (what a blurry generator gets).

Size rule (``size_fit``, the one rule for the score, ``pmf eval --offline``'s check and the offline feature
representation): images k times the classifier's input (k an integer, as from ``pmf train --image-size`` on an
upsampled built-in set) are average-pooled k x k back to it; images larger by up to a quarter are centre-cropped
(MNIST padded 28 -> 32 for training crops back exactly to the original 28x28); smaller ones are centre-padded
with zeros; other sizes are refused. RGB images are averaged to one channel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PMFError
from .frechet import frechet_distance_features

VERSION = 1  # bump when the classifier or its training changes: old cache files are then ignored
TRAIN = {"seed": 0, "epochs": 6, "batch_size": 128, "lr": 4e-3, "max_shift": 2}


class Classifier(nn.Module):
    """Two conv blocks and a 64-wide penultimate layer; input uint8-scaled images [B, 1, S, S] in [0, 1]."""

    def __init__(self, size: int, num_classes: int = 10, width: int = 16, feature_dim: int = 64):
        super().__init__()
        self.size = size
        self.conv = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.MaxPool2d(2),  # (B, w/2, S/2, S/2)
            nn.Conv2d(width // 2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),  # (B, w, S/4, S/4)
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(width * (size // 4) ** 2, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


def cache_dir() -> Path:
    """``$PMF_CACHE`` or ``~/.cache/pixel-meanflow``."""
    return Path(os.environ.get("PMF_CACHE") or Path.home() / ".cache" / "pixel-meanflow")


def fit_size(images, size: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> uint8 [N, size, size, 1]: channels averaged, then the module's size rule."""
    if torch.is_tensor(images):
        images = images.cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] not in (1, 3):
        raise PMFError(f"images must be uint8 [N, H, H, C] with C = 1 or 3, got {images.dtype} {list(images.shape)}")
    if images.dtype != np.uint8:
        raise PMFError(f"images must be uint8 (as saved), got {images.dtype}")
    if images.shape[3] == 3:
        images = np.round(images.astype(np.float32).mean(axis=3, keepdims=True)).astype(np.uint8)
    h = images.shape[1]
    how = size_fit(h, size)
    if how is None:
        raise PMFError(f"the offline classifier reads {size}x{size} images {READABLE}; got {h}x{h}")
    if how == "pool":  # an upsampled copy (--image-size): average-pool back to the classifier's size
        k = h // size
        pooled = images.reshape(len(images), size, k, size, k, 1).astype(np.float32).mean(axis=(2, 4))
        images = np.round(pooled).astype(np.uint8)
    elif how == "crop":
        lo = (h - size) // 2
        images = images[:, lo:lo + size, lo:lo + size]
    elif how == "pad":
        lo = (size - h) // 2
        images = np.pad(images, ((0, 0), (lo, size - h - lo), (lo, size - h - lo), (0, 0)))
    return images


READABLE = "at that size, up to a quarter larger (centre-cropped) or a whole multiple of it (average-pooled)"


def size_fit(h: int, size: int) -> str | None:
    """How a classifier of ``size`` px reads ``h`` px images: "same", "pool" (k times the size, an upsampled
    copy), "crop" (up to a quarter more, a zero-padded copy), "pad" (smaller), or None (another size: not read)."""
    if h == size:
        return "same"
    if h > size and h % size == 0:
        return "pool"
    if size < h <= size + size // 4:
        return "crop"
    return "pad" if h < size else None


def _to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0  # (N, 1, S, S)


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random integer translations (zero fill), one per image, drawn from ``gen``."""
    if max_shift == 0:
        return x
    n, _, s, _ = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4)  # (N, 1, S + 2m, S + 2m)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1), generator=gen)
    rows, cols = dy + torch.arange(s), dx + torch.arange(s)  # (N, S) each
    return padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def train_classifier(dataset: str = "mnist-5k", **overrides) -> tuple[Classifier, dict]:
    """Train the judge on ``dataset``'s train split (deterministic given the seed); returns it with its
    test-split accuracy and the training settings."""
    from ..data import load_builtin

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this small net trains several times faster on one thread than on two busy ones
    try:
        return _train(load_builtin(dataset, split="train"), load_builtin(dataset, split="test"),
                      {**TRAIN, **overrides})
    finally:
        torch.set_num_threads(threads)


def _train(train, test, opts: dict) -> tuple[Classifier, dict]:
    size = train.images.shape[1]
    x, y = _to_input(fit_size(train.images, size)), torch.from_numpy(train.labels)
    gen = torch.Generator().manual_seed(opts["seed"])
    with torch.random.fork_rng(devices=[]):  # layer init uses the global RNG: seed it without leaking
        torch.manual_seed(opts["seed"])
        model = Classifier(size, train.num_classes)
    optim = torch.optim.Adam(model.parameters(), lr=opts["lr"])
    steps_per_epoch = (len(x) + opts["batch_size"] - 1) // opts["batch_size"]
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, opts["lr"], total_steps=opts["epochs"] * steps_per_epoch)
    model.train()
    for _ in range(opts["epochs"]):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), opts["batch_size"]):
            idx = perm[start:start + opts["batch_size"]]
            loss = nn.functional.cross_entropy(model(_shift(x[idx], opts["max_shift"], gen)), y[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(_to_input(fit_size(test.images, size))).argmax(1).numpy()
    return model, {**opts, "test_accuracy": float((pred == test.labels).mean())}


def load_classifier(dataset: str = "mnist-5k", *, cache: str | os.PathLike | None = None,
                    verbose: bool = True) -> tuple[Classifier, dict]:
    """The cached judge for ``dataset`` (trained and saved on first use, under ``cache`` or :func:`cache_dir`)."""
    path = Path(cache or cache_dir()) / "quality" / f"{dataset}-classifier-v{VERSION}.pt"
    if path.is_file():
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            model = Classifier(obj["size"], obj["num_classes"])
            model.load_state_dict(obj["state_dict"])
            return model.eval(), obj["info"]
        except Exception:  # a damaged or foreign file: retrain and overwrite it
            pass
    if verbose:
        print(f"training the offline-score classifier for {dataset} (once; cached at {path})", flush=True)
    model, info = train_classifier(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"size": model.size, "num_classes": model.head.out_features, "state_dict": model.state_dict(),
                "info": info}, tmp)
    os.replace(tmp, path)  # atomic: concurrent first uses never read a half-written file
    return model, info


@torch.no_grad()
def judge(model: Classifier, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes [N], penultimate features [N, D]) of uint8 images [N, H, W, C]."""
    images = fit_size(images, model.size)
    preds, feats = [], []
    for start in range(0, len(images), batch_size):
        f = model.features(_to_input(images[start:start + batch_size]))
        feats.append(f.double().numpy())
        preds.append(model.head(f).argmax(1).numpy())
    return np.concatenate(preds), np.concatenate(feats)


def matched_real(train_images: np.ndarray, train_labels: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """One real training image per requested label (distinct while the class has enough, cycling after)."""
    gen = np.random.default_rng(seed)
    out = np.empty((len(labels), *train_images.shape[1:]), np.uint8)
    for c in np.unique(labels):
        pool = np.flatnonzero(train_labels == c)
        if len(pool) == 0:
            raise PMFError(f"class {c} has no training images")
        want = np.flatnonzero(labels == c)
        pick = gen.permutation(pool)[np.arange(len(want)) % len(pool)]
        out[want] = train_images[pick]
    return out


def class_means(train_images: np.ndarray, train_labels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The mean training image of each requested label, quantised to uint8 like a generator's output."""
    means = {c: np.round(train_images[train_labels == c].astype(np.float64).mean(0)).astype(np.uint8)
             for c in np.unique(labels)}
    return np.stack([means[c] for c in labels])


def offline_scores(images, labels, *, dataset: str = "mnist-5k", cache: str | os.PathLike | None = None,
                   verbose: bool = True) -> dict:
    """Offline quality of generated uint8 images [N, H, W, C] requested as ``labels`` [N].

    Returns ``accuracy`` (fraction classified as requested), ``frechet`` (Frechet distance of the classifier's
    penultimate features to the real test split), and the same two for real training images with the same
    labels (``accuracy_real_floor``, ``frechet_real_floor``) and for per-class mean images
    (``accuracy_class_means``, ``frechet_class_means``), plus ``classifier_test_accuracy`` and the settings.
    Frechet distances depend on N; the baselines use the same N and labels, so compare within one call."""
    from ..data import load_builtin

    labels = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels).astype(np.int64).reshape(-1)
    n = len(labels)
    if n < 2:
        raise PMFError(f"the offline score needs at least 2 images, got {n}")
    model, info = load_classifier(dataset, cache=cache, verbose=verbose)
    images = fit_size(images, model.size)
    if len(images) != n:
        raise PMFError(f"need one label per image: {len(images)} images, {n} labels")
    if labels.min() < 0 or labels.max() >= model.head.out_features:
        raise PMFError(f"labels must lie in [0, {model.head.out_features - 1}] for {dataset}, "
                       f"got [{labels.min()}, {labels.max()}]")
    train, test = load_builtin(dataset, split="train"), load_builtin(dataset, split="test")
    _, test_feats = judge(model, test.images)
    out: dict = {}
    sets = {"": images, "_real_floor": matched_real(train.images, train.labels, labels),
            "_class_means": class_means(train.images, train.labels, labels)}
    for suffix, imgs in sets.items():
        pred, feats = judge(model, imgs)
        out[f"accuracy{suffix}"] = float((pred == labels).mean())
        out[f"frechet{suffix}"] = frechet_distance_features(feats, test_feats)
    return {**out, "classifier_test_accuracy": info["test_accuracy"], "num_images": n, "dataset": dataset,
            "reference": f"{dataset} test split ({len(test.labels)} images)", "classifier_version": VERSION,
            "feature_dim": int(test_feats.shape[1]), "image_size": model.size}
