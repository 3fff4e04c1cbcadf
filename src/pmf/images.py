"""Saving images and grids (uint8, [N, H, W, C])."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] into one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return grid


def save_image(image: np.ndarray, path: str | Path, scale: int = 1) -> None:
    """Save a uint8 [H, W, C] image (C = 1 or 3) as PNG, optionally upscaled by nearest neighbour."""
    image = np.asarray(image)
    if image.shape[-1] == 1:
        image = image[..., 0]
    im = Image.fromarray(image)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def save_grid(images: np.ndarray, path: str | Path, nrow: int | None = None) -> None:
    """Save a grid of uint8 images; small images are upscaled so the grid is at least ~256 px wide."""
    grid = make_grid(images, nrow)
    save_image(grid, path, scale=max(1, 256 // grid.shape[1]))
