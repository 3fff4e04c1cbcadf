"""What a running server knows about its model: what GET /info says and what requests are checked against."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..checkpoints.metadata import FP32
from ..sampling_setting import SamplingSetting


@dataclass(frozen=True)
class ModelInfo:
    """What GET /info says about the model (and what requests are checked against)."""

    preset: str | None
    image_size: int
    channels: int
    class_names: list[str]
    setting: SamplingSetting  # the defaults of omega, interval, steps (and the EMA they belong to)
    noise_scale: float
    ema: str | None  # the weights loaded
    # how they are stored: {"precision": "fp32"}, or an int8 ONNX file's record with its measured error
    weights: dict = field(default_factory=lambda: dict(FP32))
