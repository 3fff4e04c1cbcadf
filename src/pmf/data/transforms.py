"""Image preprocessing shared by training and evaluation: the ADM center crop and RGB conversion."""

from __future__ import annotations

import numpy as np
from PIL import Image

GRAY_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "F"})  # PIL modes of one channel without alpha


def channels_of(modes: set[str]) -> int:
    """The channels of a folder whose images have these PIL modes: 1 when all are gray, else 3 (RGB)."""
    return 1 if modes and modes <= GRAY_MODES else 3


def to_gray(image: Image.Image) -> Image.Image:
    """Mode L from any PIL mode (through ``to_rgb`` unless the image is already 8-bit gray)."""
    return image if image.mode == "L" else to_rgb(image).convert("L")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any PIL mode (grayscale, alpha composited on white, CMYK, palette, 16-bit)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        arr = np.clip(arr / max(arr.max(), 1.0) * 255.0, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr)
    return image.convert("RGB")


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """The ADM (guided-diffusion) center crop used for ImageNet at 256/512: halve with a box filter while the
    short side is at least 2 * size, resize bicubically so the short side is ``size``, crop the centre."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top: top + size, left: left + size])
