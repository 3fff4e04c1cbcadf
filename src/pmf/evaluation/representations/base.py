"""The frozen feature extractor every representation space is: images in the generator's range [-1, 1] in,
one float32 feature vector per image out, differentiable with respect to the images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...errors import PMFError


class Representation(nn.Module):
    """A frozen feature network: ``forward(images [B, C, H, W] in [-1, 1], C = 1 or 3, H = W) -> [B, D]``.

    Parameters never train and the module stays in eval mode even inside a parent's ``.train()``, so a loss
    can backpropagate through it to the images; evaluation calls it under ``torch.no_grad``. Subclasses set
    ``name``, ``input_size`` and ``feature_dim`` and say in :meth:`preprocessing` how images are brought to
    the network (recorded in statistics files, so two files are only compared when it matches)."""

    name: str = ""
    input_size: int = 0
    feature_dim: int = 0

    def preprocessing(self) -> dict:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"features": [B, D]}`` plus any side outputs a metric reads (Inception adds logits and spatial
        features), from one pass."""
        return {"features": self(images)}

    def describe(self) -> dict:
        """The record a statistics file or metrics.json keeps: name, feature size and preprocessing."""
        return {"name": self.name, "feature_dim": self.feature_dim, "preprocessing": self.preprocessing()}

    def freeze(self) -> Representation:
        super().train(False)
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> Representation:
        return super().train(False)  # frozen: batch-norm statistics and dropout never switch to training


def check_images(images: torch.Tensor, what: str) -> torch.Tensor:
    """The images as float [B, C, H, H] with C = 1 or 3, or one PMFError line."""
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] not in (1, 3) \
            or images.shape[2] != images.shape[3]:
        shape = list(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise PMFError(f"{what} takes images [B, C, H, H] with C = 1 or 3 in [-1, 1], got {shape}")
    return images if images.is_floating_point() else images.float()


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """[B, 1 or 3, H, W] -> [B, 3, H, W]: grey repeated to RGB, as Inception's protocol does."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def resize(x: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Whole-image resize to size x size (antialiased when shrinking; no crop: generated images are already
    the square crop the data were made with)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=x.shape[-1] > size)


RESIZE_RULE = "whole image, antialiased {mode} (torch.nn.functional.interpolate) to {size}x{size}; none at that size"


def from_uint8(images) -> torch.Tensor:
    """uint8 [N, H, W, C] (as saved) -> float [N, C, H, W] in [-1, 1]: x = u / 127.5 - 1, the inverse of the
    saved conversion round((x + 1) / 2 * 255) on its grid."""
    x = torch.as_tensor(np.ascontiguousarray(images)) if not torch.is_tensor(images) else images
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise PMFError(f"images must be uint8 [N, H, W, C] with C = 1 or 3, got {x.dtype} {list(x.shape)}")
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def extract(rep: Representation, images, batch_size: int = 100, device=None) -> dict[str, np.ndarray]:
    """Every output of ``rep.forward_all`` (float64 numpy, [N, ...]) for uint8 images [N, H, W, C], in
    batches, without gradients."""
    device = device or next((p.device for p in rep.parameters()), torch.device("cpu"))
    out: dict[str, list] = {}
    for start in range(0, len(images), batch_size):
        x = from_uint8(images[start:start + batch_size]).to(device)
        for key, value in rep.forward_all(x).items():
            out.setdefault(key, []).append(value.detach().double().cpu().numpy())
    if not out:
        raise PMFError(f"no images to compute {rep.name} features of")
    return {k: np.concatenate(v) for k, v in out.items()}
