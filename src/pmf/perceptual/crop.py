"""Paired random resized crops (spec 3.8): ONE crop box per sample, applied identically to the predicted
and the clean image, resampled to a square output with antialiased bicubic interpolation.

The box is drawn like torchvision's ``RandomResizedCrop`` (up to 10 tries of area and log-aspect, then a
centre crop clamped to the ratio range). The resize is written as two per-sample resampling matrices,
``out = Ry @ img @ Rx^T``, whose rows hold the antialiased bicubic weights of ``F.interpolate(...,
mode="bicubic", antialias=True)`` on the cropped region: one batched einsum handles boxes of different
sizes, and the result is differentiable with respect to the images.
"""

from __future__ import annotations

import math

import torch

_TRIES = 10
_AA_SUPPORT = 2.0  # half-width of the bicubic kernel, in input pixels at scale 1
_AA_A = -0.5  # the cubic coefficient that antialiased bicubic uses (PIL's)


def sample_crop_boxes(batch: int, height: int, width: int, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop boxes (top, left, h, w) as an int64 [B, 4] tensor, on the CPU.

    Always consumes the same number of draws from ``generator`` (4 tensors), so the stream stays aligned
    whatever the image size."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    u_area = torch.rand(batch, _TRIES, generator=generator, dtype=torch.float64)
    u_ratio = torch.rand(batch, _TRIES, generator=generator, dtype=torch.float64)
    u_top = torch.rand(batch, generator=generator, dtype=torch.float64)
    u_left = torch.rand(batch, generator=generator, dtype=torch.float64)

    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)  # (B, T)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)  # (B, T)
    w = torch.round(torch.sqrt(target * aspect)).long()  # (B, T)
    h = torch.round(torch.sqrt(target / aspect)).long()  # (B, T)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # (B, T)
    first = ok.long().argmax(dim=1)  # index of the first valid try (0 when none is valid)
    h = h.gather(1, first[:, None])[:, 0]
    w = w.gather(1, first[:, None])[:, 0]

    # Fallback when no try fits: the whole image, trimmed to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_w, fb_h = int(round(height * ratio[1])), height
    else:
        fb_w, fb_h = width, height
    any_ok = ok.any(dim=1)
    h = torch.where(any_ok, h, torch.full_like(h, fb_h))
    w = torch.where(any_ok, w, torch.full_like(w, fb_w))
    top = torch.where(any_ok, (u_top * (height - h + 1)).floor().long(), torch.full_like(h, (height - fb_h) // 2))
    left = torch.where(any_ok, (u_left * (width - w + 1)).floor().long(), torch.full_like(w, (width - fb_w) // 2))
    return torch.stack([top, left, h, w], dim=1)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5, zero for |x| >= 2."""
    x = x.abs()
    a = _AA_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                  dtype=torch.float32, device=None) -> torch.Tensor:
    """[B, out_size, in_size] rows of antialiased bicubic weights that resample the window
    [start, start + length) of an axis of ``in_size`` pixels to ``out_size`` pixels (align_corners=False).

    Matches PyTorch's antialiased kernel: the support widens with the downscaling factor, taps are cut at
    the window's edges and each row is renormalised to sum to 1."""
    start = start.to(device=device, dtype=torch.float64)[:, None, None]  # (B, 1, 1)
    length = length.to(device=device, dtype=torch.float64)[:, None, None]  # (B, 1, 1)
    scale = length / out_size  # input pixels per output pixel
    support = _AA_SUPPORT * scale.clamp_min(1.0)
    inv = 1.0 / scale.clamp_min(1.0)
    i = torch.arange(out_size, device=device, dtype=torch.float64)[None, :, None]  # (1, O, 1)
    center = scale * (i + 0.5)  # (B, O, 1), in window coordinates
    lo = torch.clamp(torch.trunc(center - support + 0.5), min=0.0)
    hi = torch.minimum(torch.trunc(center + support + 0.5), length)
    k = torch.arange(in_size, device=device, dtype=torch.float64)[None, None, :] - start  # (B, 1, I)
    weights = _cubic((k - center + 0.5) * inv) * ((k >= lo) & (k < hi))  # (B, O, I)
    weights = weights / weights.sum(dim=2, keepdim=True)
    return weights.to(dtype)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size]: each sample's box (top, left, h, w) resampled to size x size."""
    B, C, H, W = images.shape
    boxes = boxes.to(images.device)
    ry = resize_matrix(boxes[:, 0], boxes[:, 2], H, size, images.dtype, images.device)  # (B, S, H)
    rx = resize_matrix(boxes[:, 1], boxes[:, 3], W, size, images.dtype, images.device)  # (B, S, W)
    rows = torch.einsum("bsh,bchw->bcsw", ry, images)  # (B, C, S, W)
    return torch.einsum("bcsw,btw->bcst", rows, rx)  # (B, C, S, S)


def paired_random_resized_crop(a: torch.Tensor, b: torch.Tensor, size: int, *, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3), generator: torch.Generator | None = None):
    """The same random resized crop of each sample of ``a`` and ``b`` ([B, C, H, W] each).
    Returns (a_crop, b_crop, boxes) with crops [B, C, size, size] and boxes [B, 4] (top, left, h, w)."""
    if a.shape != b.shape:
        raise ValueError(f"paired crops need equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    boxes = sample_crop_boxes(a.shape[0], a.shape[2], a.shape[3], scale=scale, ratio=ratio, generator=generator)
    return crop_resize(a, boxes, size), crop_resize(b, boxes, size), boxes
