"""Paired random resized crops (spec 3.8): ONE crop box per sample, applied identically to the predicted
and the clean image, resampled to a square output, as the release does it.

Box draw (the release's ``paired_random_resized_crop``, one draw per sample, no retries):
``area = H * W * U(lo, hi)``, ``aspect = exp(U(log 3/4, log 4/3))``,
``w = clip(round(sqrt(area * aspect)), 1, W)``, ``h = clip(round(sqrt(area / aspect)), 1, H)``,
``top ~ randint(0, H - h)`` and ``left ~ randint(0, W - w)``, both ends inclusive.

Resampling (the release's ``jax.image.scale_and_translate(img, (S, S, C), (0, 1), scale=(S / h, S / w),
translation=(-top * S / h, -left * S / w), method="cubic", antialias=True)`` on the WHOLE image): along
each axis, output pixel ``o`` samples the input at ``s_o = (o + 0.5) * len / S + start - 0.5``; input pixel
``j`` of the whole axis gets the Keys cubic weight (a = -0.5) of ``|s_o - j| / k`` with
``k = max(len / S, 1)`` (the antialiasing widening when downsampling). Taps are cut only at the image's
borders, not at the box's, so pixels just outside the box enter near its edges. Each row is normalised to
sum 1 (a row whose sum is at most 1000 float32 epsilons is zeroed), and rows whose sample lies outside
``[-0.5, size - 0.5]`` are zeroed. The two axes are separable: per sample, ``out = Ry @ img @ Rx^T`` with
``Ry`` [S, H] and ``Rx`` [S, W], applied by batched matrix products, differentiable w.r.t. the images.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from ..errors import PMFError

_SUM_FLOOR = 1000.0 * torch.finfo(torch.float32).eps  # rows with a smaller weight sum are zeroed


def sample_crop_boxes(batch: int, height: int, width: int, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop boxes (top, left, h, w) as an int64 [B, 4] tensor, on the CPU: one draw per sample.

    Consumes exactly four float64 tensors of ``batch`` uniforms from ``generator`` (area, log-aspect, top,
    left), so the stream stays aligned whatever the image size. ``randint(0, n)`` inclusive is drawn as
    ``floor(u * (n + 1))``."""
    u_area = torch.rand(batch, generator=generator, dtype=torch.float64)
    u_ratio = torch.rand(batch, generator=generator, dtype=torch.float64)
    u_top = torch.rand(batch, generator=generator, dtype=torch.float64)
    u_left = torch.rand(batch, generator=generator, dtype=torch.float64)

    area = height * width * (scale[0] + (scale[1] - scale[0]) * u_area)  # (B,)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)  # (B,)
    w = torch.round(torch.sqrt(area * aspect)).long().clamp(1, width)  # (B,)
    h = torch.round(torch.sqrt(area / aspect)).long().clamp(1, height)  # (B,)
    top = (u_top * (height - h + 1)).floor().long().clamp_max(height - h)  # (B,) in [0, H - h]
    left = (u_left * (width - w + 1)).floor().long().clamp_max(width - w)  # (B,) in [0, W - w]
    return torch.stack([top, left, h, w], dim=1)


def _keys_cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 on x >= 0, zero for x >= 2."""
    near = ((1.5 * x - 2.5) * x) * x + 1.0  # (a + 2) x^3 - (a + 3) x^2 + 1
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0  # a x^3 - 5a x^2 + 8a x - 4a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                  dtype=torch.float32, device=None) -> torch.Tensor:
    """[B, out_size, in_size] weights that resample the window [start, start + length) of an axis of
    ``in_size`` pixels to ``out_size`` pixels, with taps over the whole axis (see the module docstring).

    Computed in float32 in the release's order of operations (its scale, translation and weights are
    float32): scale = S / len, translation = -start * scale, inv = 1 / scale,
    sample = (o + 0.5) * inv - translation * inv - 0.5. On the release's fixture a float64 evaluation
    differs by up to 1.7e-5 (sample positions off by float32 rounding), this one by 4.2e-7. Returned in ``dtype``."""
    f32 = torch.float32
    length = length.to(device=device, dtype=f32)[:, None, None]  # (B, 1, 1)
    scale = torch.full_like(length, out_size) / length  # a true division (number / tensor multiplies by 1 / x)
    translation = -start.to(device=device, dtype=f32)[:, None, None] * scale  # (B, 1, 1)
    inv_scale = torch.ones_like(scale) / scale  # input pixels per output pixel
    widen = inv_scale.clamp_min(1.0)  # antialiasing: the kernel is stretched by 1 / scale when downsampling
    o = torch.arange(out_size, device=device, dtype=f32)[None, :, None]  # (1, O, 1)
    sample = (o + 0.5) * inv_scale - translation * inv_scale - 0.5  # (B, O, 1): input coordinate of o
    j = torch.arange(in_size, device=device, dtype=f32)[None, None, :]  # (1, 1, I)
    weights = _keys_cubic((sample - j).abs() / widen)  # (B, O, I)
    total = weights.sum(dim=2, keepdim=True)  # (B, O, 1)
    weights = torch.where(total.abs() > _SUM_FLOOR, weights / torch.where(total != 0, total, 1.0), 0.0)
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)  # (B, O, 1)
    return torch.where(inside, weights, 0.0).to(dtype)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size]: each sample's box (top, left, h, w) resampled to size x size
    like the release's ``scale_and_translate`` cubic antialiased crop (taps reach outside the box)."""
    if images.dim() != 4:
        raise PMFError(f"crop_resize needs images [B, C, H, W], got shape {tuple(images.shape)}")
    B, C, H, W = images.shape
    if tuple(boxes.shape) != (B, 4):
        raise PMFError(f"crop_resize needs boxes [{B}, 4] (top, left, h, w), got shape {tuple(boxes.shape)}")
    if not isinstance(size, int) or size < 1:
        raise PMFError(f"crop_resize needs an output size >= 1, got {size!r}")
    if B and bool((boxes[:, 2:] < 1).any()):
        raise PMFError(f"crop boxes need h, w >= 1, got {boxes[boxes[:, 2:].min(dim=1).values < 1][0].tolist()}")
    boxes = boxes.to(images.device)
    # float32 at least (as the release, which trains in float32), also under a bf16 autocast
    dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    ry = resize_matrix(boxes[:, 0], boxes[:, 2], H, size, dtype, images.device)  # (B, S, H)
    rx = resize_matrix(boxes[:, 1], boxes[:, 3], W, size, dtype, images.device)  # (B, S, W)
    device_type = images.device.type
    off = torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()
    with off:
        rows = torch.einsum("bsh,bchw->bcsw", ry, images.to(dtype))  # (B, C, S, W): one batched matmul
        out = torch.einsum("bcsw,btw->bcst", rows, rx)  # (B, C, S, S)
    return out.to(images.dtype)


def paired_random_resized_crop(a: torch.Tensor, b: torch.Tensor, size: int, *, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3), generator: torch.Generator | None = None):
    """The same random resized crop of each sample of ``a`` and ``b`` ([B, C, H, W] each).
    Returns (a_crop, b_crop, boxes) with crops [B, C, size, size] and boxes [B, 4] (top, left, h, w)."""
    if a.shape != b.shape:
        raise PMFError(f"paired crops need equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    boxes = sample_crop_boxes(a.shape[0], a.shape[2], a.shape[3], scale=scale, ratio=ratio, generator=generator)
    return crop_resize(a, boxes, size), crop_resize(b, boxes, size), boxes
