"""``offline``: the offline-score classifier of a built-in dataset (pmf.evaluation.offline_score) as a representation
space:
its last convolution block's feature maps, flattened, and its penultimate layer, as one vector. Needs no
downloaded weights (the classifier is trained once by the project and cached), so CPU runs and tests use it.

``pixels``: the image itself, resized to a small square and flattened; the memorisation check's last resort."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..offline_score import size_fit
from .base import RESIZE_RULE, Representation, check_images, resize, to_rgb


class OfflineRepresentation(Representation):
    """[B, C, H, H] in [-1, 1] -> [B, w * (S/4)^2 + 64] of the classifier ``offline_score.Classifier`` at size S.

    Size rule (``offline_score.size_fit``, as the offline score reads images, on tensors): k times S is
    average-pooled k x k (an upsampled copy), a larger image up to S + S/4 is centre-cropped (the zero padding of
    MNIST 28 -> 32 comes off exactly), a smaller one centre-padded with black; any other size, which the offline
    score refuses, is resized (antialiased bilinear). RGB is averaged to grey."""

    name = "offline"

    def __init__(self, classifier, dataset: str, version: int):
        super().__init__()
        self.classifier = classifier
        self.dataset, self.version = dataset, version
        self.input_size = classifier.size
        width = classifier.conv[-3].num_features  # the second block's batch norm
        self.feature_dim = width * (classifier.size // 4) ** 2 + classifier.fc[1].out_features
        self.freeze()

    def preprocessing(self) -> dict:
        s = self.input_size
        return {"input_size": s, "expected_range": [-1, 1], "normalisation": "(x + 1) / 2 -> [0, 1]",
                "channels": "RGB averaged to grey",
                "resize": f"k x k average pooling from k * {s} px, centre crop from {s + 1}..{s + s // 4} px, "
                          f"centre black padding below {s} px, " + RESIZE_RULE.format(mode="bilinear", size=s)
                          + " otherwise",
                "pooling": "conv feature maps flattened, then the penultimate layer",
                "dataset": self.dataset, "classifier_version": self.version}

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        s, h = self.input_size, x.shape[-1]
        x = (x.mean(dim=1, keepdim=True) + 1) / 2  # (B, 1, H, H) in [0, 1]
        how = size_fit(h, s)
        if how == "same":
            return x
        if how == "pool":
            return F.avg_pool2d(x, h // s)
        if how == "crop":
            lo = (h - s) // 2
            return x[..., lo:lo + s, lo:lo + s]
        if how == "pad":
            lo = (s - h) // 2
            return F.pad(x, (lo, s - h - lo, lo, s - h - lo))
        return resize(x, s, "bilinear")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.fit(check_images(images, "the offline representation"))
        conv = self.classifier.conv(x)  # (B, w, S/4, S/4)
        return torch.cat([conv.flatten(1), self.classifier.fc(conv)], dim=1).float()


def offline(*, dataset: str = "mnist-5k", cache=None, classifier=None, verbose: bool = True,
            device=None) -> OfflineRepresentation:
    """The cached classifier of ``dataset`` (trained once on first use, see
    pmf.evaluation.offline_score.load_classifier), or
    a given ``classifier`` (tests)."""
    from .. import offline_score as quality

    if classifier is None:
        classifier, _ = quality.load_classifier(dataset, cache=cache, verbose=verbose)
    return OfflineRepresentation(classifier, dataset, quality.VERSION).to(device or "cpu")


class PixelRepresentation(Representation):
    """[B, C, H, H] in [-1, 1] -> [B, 3 * size^2]: the RGB image resized to ``size`` (antialiased bilinear)."""

    name = "pixels"

    def __init__(self, size: int = 16):
        super().__init__()
        self.input_size, self.feature_dim = size, 3 * size * size
        self.freeze()

    def preprocessing(self) -> dict:
        return {"input_size": self.input_size, "expected_range": [-1, 1], "normalisation": "none",
                "channels": "grey repeated to RGB", "resize": RESIZE_RULE.format(mode="bilinear", size=self.input_size),
                "pooling": "none (flattened pixels)"}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_rgb(check_images(images, "the pixel representation"))
        return resize(x, self.input_size, "bilinear").flatten(1).float()


def pixels(*, size: int = 16, device=None) -> PixelRepresentation:
    return PixelRepresentation(size).to(device or "cpu")
