"""Typed model configuration and the named presets (spec section 5)."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass

from .errors import PMFError


def doc(default=dataclasses.MISSING, help: str = "", *, factory=dataclasses.MISSING, flag: str | None = None,
        none: str | None = None, old: tuple[str, ...] = (), parse=None, min: float | None = None,
        max: float | None = None):
    """A config field with what the command line shows of it: ``help``, its ``flag`` when not spelled from the
    field's path, what None means (``none``), ``old`` spellings kept as hidden aliases with a note, ``parse``
    (text -> value) where the flag's text is not the type's usual form, and the smallest and largest value a
    command's option takes (``min``, ``max``; ``pmf.commands._config_flags.check_ranges``)."""
    meta = {"help": help, "flag": flag, "none": none, "old": old, "parse": parse, "min": min, "max": max}
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


@functools.cache
def field_types(cls) -> dict:
    """The resolved annotations of a dataclass (its module's names: ``Literal`` aliases, nested configs)."""
    return typing.get_type_hints(cls)


def literal_choices(tp) -> tuple | None:
    """The values of a ``Literal`` type, or of ``Literal | None`` (None included); None for any other type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if len(args) == 1 and typing.get_origin(args[0]) is typing.Literal and type(None) in typing.get_args(tp):
        return (*typing.get_args(args[0]), None)
    return None


def check_choices(obj, where: str = "") -> None:
    """Refuse a value outside its field's ``Literal`` type, with a message naming ``where.field``."""
    for name, tp in field_types(type(obj)).items():
        choices, value = literal_choices(tp), getattr(obj, name)
        if choices is not None and value not in choices:
            names = [repr(c) for c in choices]
            names = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            raise PMFError(f"{where + '.' if where else ''}{name} must be {names}, got {value!r}")


def dataclass_from_dict(cls, data: dict, where: str):
    """``cls(**data)`` for a config dataclass, refusing unknown keys with a message naming ``where``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PMFError(f"unknown {where} fields {unknown}; known fields: {sorted(known)}")
    return cls(**data)


@dataclass
class ModelConfig:
    """Architecture of a pmfDiT. Validated on construction; messages name the field."""

    input_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    hidden_size: int = 64
    depth: int = 4
    num_heads: int = 4
    aux_head_depth: int = 2
    num_classes: int = 10
    mlp_ratio: float = 8.0 / 3.0
    bottleneck_dim: int | None = None  # None: 128, or 256 for hidden_size > 1024
    v_head: bool = True
    class_tokens: int = 8
    omega_tokens: int = 4
    interval_tokens: int = 2
    time_tokens: int = 4
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads",
                     "num_classes", "class_tokens", "omega_tokens", "interval_tokens", "time_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PMFError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.aux_head_depth, int) or not 0 < self.aux_head_depth < self.depth:
            raise PMFError(f"ModelConfig.aux_head_depth must be in [1, depth - 1] = [1, {self.depth - 1}], "
                           f"got {self.aux_head_depth!r}")
        if self.input_size % self.patch_size != 0:
            raise PMFError(f"ModelConfig.patch_size={self.patch_size} does not divide "
                           f"input_size={self.input_size}")
        if self.hidden_size % self.num_heads != 0:
            raise PMFError(f"ModelConfig.num_heads={self.num_heads} does not divide "
                           f"hidden_size={self.hidden_size}")
        if self.head_dim % 4 != 0:
            raise PMFError(f"head_dim = hidden_size / num_heads = {self.head_dim} must be a multiple of 4 "
                           "for 2D rotary embeddings")
        if not self.mlp_ratio > 0:
            raise PMFError(f"ModelConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if self.bottleneck_dim is not None and self.bottleneck_dim < 1:
            raise PMFError(f"ModelConfig.bottleneck_dim must be positive or None, got {self.bottleneck_dim!r}")
        if not self.noise_scale > 0:
            raise PMFError(f"ModelConfig.noise_scale must be > 0, got {self.noise_scale!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        return self.class_tokens + self.omega_tokens + 2 * self.interval_tokens + self.time_tokens

    @property
    def bottleneck(self) -> int:
        if self.bottleneck_dim is not None:
            return self.bottleneck_dim
        return 256 if self.hidden_size > 1024 else 128

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU width: int(width * ratio), rounded up to a multiple of 8 above width 1024 (release)."""
        hidden = int(self.hidden_size * self.mlp_ratio)
        if self.hidden_size > 1024:
            hidden = 8 * math.ceil(hidden / 8)
        return hidden

    @property
    def shared_depth(self) -> int:
        return self.depth - self.aux_head_depth

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return dataclass_from_dict(cls, data, "ModelConfig")


def _imagenet(depth: int, width: int, heads: int, patch: int, noise_scale: float) -> dict:
    return dict(input_size=16 * patch, patch_size=patch, in_channels=3, hidden_size=width, depth=depth,
                num_heads=heads, aux_head_depth=8, num_classes=1000, noise_scale=noise_scale)


PRESETS: dict[str, dict] = {
    # Released ImageNet models (spec section 5): 16x16 tokens at 256 px (patch 16) or 512 px (patch 32).
    "pMF-B/16": _imagenet(16, 768, 12, 16, 1.0),
    "pMF-L/16": _imagenet(32, 1024, 16, 16, 1.0),
    "pMF-H/16": _imagenet(48, 1280, 16, 16, 2.0),
    "pMF-B/32": _imagenet(16, 768, 12, 32, 2.0),
    "pMF-L/32": _imagenet(32, 1024, 16, 32, 4.0),
    "pMF-H/32": _imagenet(48, 1280, 16, 32, 4.0),
    # Small presets that run on a CPU.
    # The configuration of the official fixtures (0.4M parameters with the v-head).
    "pMF-Tiny/4": dict(input_size=32, patch_size=4, in_channels=3, hidden_size=64, depth=4, num_heads=4,
                       aux_head_depth=2, num_classes=10, noise_scale=1.0),
    # A 32x32 RGB model of a few million parameters.
    "pMF-S/4": dict(input_size=32, patch_size=4, in_channels=3, hidden_size=256, depth=6, num_heads=4,
                    aux_head_depth=2, num_classes=10, noise_scale=1.0),
    # MNIST-sized grayscale model: 28x28, patch 7, 16 tokens, about 1.4M parameters.
    "pMF-MNIST/7": dict(input_size=28, patch_size=7, in_channels=1, hidden_size=128, depth=4, num_heads=4,
                        aux_head_depth=2, num_classes=10, noise_scale=1.0),
}


def preset_of(config: ModelConfig) -> str | None:
    """The name of the preset whose fields ``config`` has (``v_head`` aside), or None."""
    for name, fields in PRESETS.items():
        if all(getattr(config, k) == v for k, v in fields.items()):
            return name
    return None


def model_fields(arch: str, **overrides) -> dict:
    """Every field of ``model_config(arch, **overrides)`` before ModelConfig checks them together: the defaults,
    the preset's, then the overrides that are not None (``with_v_head`` is an alias of ``v_head``). For a caller
    that must look at one field before the rest can hold (``pmf train`` fits input_size to the data)."""
    if arch not in PRESETS:
        raise PMFError(f"unknown architecture {arch!r}; known presets: {', '.join(PRESETS)}")
    if "with_v_head" in overrides:
        overrides["v_head"] = overrides.pop("with_v_head")
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    fields = {k: v for k, v in defaults.items() if v is not dataclasses.MISSING} | PRESETS[arch]
    for key, value in overrides.items():
        if key not in defaults:
            raise PMFError(f"unknown model override {key!r}; known fields: {sorted(defaults)}")
        if value is not None:
            fields[key] = value
    return fields


def model_config(arch: str, **overrides) -> ModelConfig:
    """Config of a named preset with any field overridden (``with_v_head`` is an alias of ``v_head``)."""
    return ModelConfig(**model_fields(arch, **overrides))
