"""The response bodies of POST /generate: one PNG grid, an .npz of the images and labels, or JSON with one base64
PNG per image and the settings used."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ..images import make_grid
from .batcher import ImageJob
from .model_info import ModelInfo


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W, C] image (C = 1 or 3)."""
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def encode(images: np.ndarray, job: ImageJob, fmt: str, info: ModelInfo) -> tuple[bytes | dict, str]:
    """The response body of ``images`` uint8 [N, H, W, C] in ``fmt`` and its media type."""
    labels = np.asarray(job.labels, dtype=np.int64)
    if fmt == "npz":
        buf = io.BytesIO()
        np.savez(buf, images=images, labels=labels)
        return buf.getvalue(), "application/octet-stream"
    if fmt == "png":
        return encode_png(make_grid(images, nrow=min(len(images), 8))), "image/png"
    return {"images": [{"index": i, "label": int(c), "class_name": info.class_names[c],
                        "png": base64.b64encode(encode_png(im)).decode("ascii")}
                       for i, (c, im) in enumerate(zip(job.labels, images))],
            "settings": {"seed": job.seed, "omega": job.omega, "t_min": job.t_min, "t_max": job.t_max,
                         "steps": job.steps, "ema": info.ema, "noise_scale": info.noise_scale}}, "application/json"
