"""What a model's files say about it beyond its weights, as one record: ``ModelMetadata`` (the sampling setting,
one name per class, the preset, how the weights are stored, the training data). It is resolved once, when a model
is loaded (``pmf.checkpoints.load.LoadedCheckpoint.meta``, the ONNX runtime's ``OnnxGenerator.meta``, a hub
folder's ``Pretrained.meta``), and written by every export in the same fields (``to_dict``: a hub folder's
config.json, the diffusers config, an ONNX file's metadata), so a model reads the same from any of its forms."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..class_choice import class_names
from ..sampling_setting import SamplingSetting

# how the weights are stored: float32 (pmf.export.onnx_quantize records int8 and its measured error instead)
FP32 = {"precision": "fp32"}


RECORD_FIELDS = ("sampling_setting", "class_names", "preset", "weights", "data")  # the names files record

@dataclass(frozen=True)
class ModelMetadata:
    """The record; ``class_names`` always holds one name per class (``pmf.class_choice.class_names``)."""

    setting: SamplingSetting  # the default sampling setting (released, the recipe's, or the export's)
    class_names: list[str]
    preset: str | None = None  # recorded, or recognised from the shapes
    weights: dict = field(default_factory=lambda: dict(FP32))
    data: str | None = None  # the training data a training checkpoint records (a built-in name or a path)

    @classmethod
    def resolve(cls, num_classes: int, *, setting: SamplingSetting, preset: str | None = None,
                data: str | None = None, recorded: list[str] | None = None,
                weights: dict | None = None) -> ModelMetadata:
        """The record of a model of ``num_classes`` classes: the names the file ``recorded`` (one per class), else
        the rule's."""
        return cls(setting, class_names(num_classes, data=data, arch=preset, recorded=recorded), preset,
                   dict(weights or FP32), data)

    def to_dict(self) -> dict:
        """The fields every export writes (JSON values), named as ``RECORD_FIELDS``."""
        values = (self.setting.to_dict(), list(self.class_names), self.preset, dict(self.weights), self.data)
        return dict(zip(RECORD_FIELDS, values, strict=True))

    @classmethod
    def from_dict(cls, fields: dict, num_classes: int) -> ModelMetadata:
        """The record of ``to_dict``'s fields (missing ones, in files written before a field existed: the rule's
        defaults)."""
        return cls.resolve(num_classes, setting=SamplingSetting.from_dict(fields.get("sampling_setting") or {}),
                           preset=fields.get("preset"), data=fields.get("data"), recorded=fields.get("class_names"),
                           weights=fields.get("weights"))

    def replace(self, **changes) -> ModelMetadata:
        from dataclasses import replace

        return replace(self, **changes)


class CarriesMetadata:
    """What holds a ``meta`` record (a loaded checkpoint, a hub folder, an ONNX generator) answers its setting,
    preset and data from it: one rule for every carrier (``meta.weights`` is the weights' precision)."""

    meta: ModelMetadata

    @property
    def setting(self) -> SamplingSetting:
        return self.meta.setting

    @property
    def preset(self) -> str | None:
        return self.meta.preset

    @property
    def data(self) -> str | None:
        return self.meta.data
