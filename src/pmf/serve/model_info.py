"""What a running server knows about its model: what GET /info says and what requests are checked against, taken
from the loaded model's ``ModelMetadata`` record (``ModelInfo.from_meta``), the record every export writes."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..checkpoints.metadata import FP32, ModelMetadata
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

    @classmethod
    def from_meta(cls, meta: ModelMetadata, config, *, ema: str | None) -> ModelInfo:
        """The info of a model whose files say ``meta`` (preset, class names, sampling setting, weights: a torch
        checkpoint's ``LoadedCheckpoint.meta``, an ONNX file's ``OnnxGenerator.meta``, a hub folder's) and whose
        network has ``config`` (image size, channels, noise scale); ``ema``: the weights loaded."""
        return cls(meta.preset, config.input_size, config.in_channels, list(meta.class_names), meta.setting,
                   config.noise_scale, ema, weights=dict(meta.weights))
