"""The sampling setting of a model (spec section 4): guidance scale omega, guidance interval [t_min, t_max],
sampling steps, the EMA the setting belongs to and the network's prediction type, with the one rule that says
which values are valid. The sampler, the network's input checks, the server, evaluation, the training
config and the command-line flags all check through ``check_guidance`` / ``SamplingSetting``."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import PMFError
from .model_configs import ModelConfig, preset_of
from .released_models import released
from .vocabulary import PREDICTIONS


def ema_name(kind: str, value: float) -> str:
    """The one naming rule of EMAs: ``hl500`` for a 500-kimg half-life, ``d0.99`` for a constant decay 0.99."""
    return f"hl{value:g}" if kind == "halflife" else f"d{value:g}"


class SettingError(PMFError):
    """A sampling setting outside the valid range; ``field`` names the first bad field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_guidance(omega, t_min, t_max, *, names: Mapping[str, str] | None = None) -> None:
    """Raise a ``SettingError`` naming the first bad field unless 0 < omega < inf and 0 <= t_min <= t_max <= 1
    (numbers or [B] tensors, every row checked with one device sync). ``names`` renames fields in the
    message (e.g. ``{"omega": "--omega"}``)."""
    names = {"omega": "omega", "t_min": "t_min", "t_max": "t_max", **(names or {})}
    given = {"omega": omega, "t_min": t_min, "t_max": t_max}
    for field, value in given.items():
        if isinstance(value, bool) or not (torch.is_tensor(value) or isinstance(value, (int, float))):
            raise SettingError(field, f"{names[field]} must be a number, got {type(value).__name__}")
    device = next((v.device for v in given.values() if torch.is_tensor(v)), None)
    om, lo, hi = torch.broadcast_tensors(*(torch.as_tensor(v, device=device, dtype=torch.float32)
                                           for v in given.values()))
    rules = (("omega", om, ~((om > 0) & om.isfinite()), "must be > 0 and finite (1: no guidance)"),
             ("t_min", lo, ~((lo >= 0) & (lo <= 1)), "must be in [0, 1]"),
             ("t_max", hi, ~((hi >= 0) & (hi <= 1)), "must be in [0, 1]"),
             ("t_min", lo, lo > hi, ""))
    found = torch.stack([mask.any() for _, _, mask, _ in rules]).tolist()
    if not any(found):
        return
    field, value, mask, rule = rules[found.index(True)]
    i = mask.reshape(-1).nonzero()[0, 0]
    if rule:
        raise SettingError(field, f"{names[field]} {rule}, got {float(value.reshape(-1)[i]):g}")
    raise SettingError("t_min", f"the guidance interval needs {names['t_min']} <= {names['t_max']}, got "
                       f"[{float(lo.reshape(-1)[i]):g}, {float(hi.reshape(-1)[i]):g}]")


def check_steps(steps, *, name: str = "steps") -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SettingError("steps", f"{name} must be a positive integer, got {steps!r}")


def check_prediction(prediction, *, name: str = "prediction") -> None:
    if prediction not in PREDICTIONS:
        raise SettingError("prediction", f"{name} must be 'x' or 'u', got {prediction!r}")


@dataclass(frozen=True)
class SamplingSetting:
    """A guidance setting with the EMA it belongs to, the network's prediction type and where it came from
    (``source``, for messages). Valid on construction (``check_guidance``, ``check_steps``)."""

    omega: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0
    steps: int = 1
    ema: str | None = None  # an EMA name of a training checkpoint ('hl2000', 'd0.99'), None: the file's weights
    source: str = "no guidance (omega 1 on [0, 1])"
    prediction: str = "x"  # "x": the network predicts clean images (pMF); "u": average velocities (spec 2)

    def __post_init__(self) -> None:
        check_guidance(self.omega, self.t_min, self.t_max)
        check_steps(self.steps)
        check_prediction(self.prediction)
        for field in ("omega", "t_min", "t_max"):  # numbers as floats, so that to_dict is JSON-ready
            object.__setattr__(self, field, float(getattr(self, field)))

    def to_dict(self) -> dict:
        """The setting as JSON-ready fields (what exports and model cards record)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, fields: dict, **changes) -> SamplingSetting:
        """A setting from ``to_dict``'s fields (unknown keys are ignored, missing ones take the defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in fields.items() if k in known}, **changes})

    def replace(self, **changes) -> SamplingSetting:
        """A copy with ``changes`` (None values are ignored), checked again."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> str:
        ema = f", EMA {self.ema}" if self.ema else ""
        pred = ", u-prediction" if self.prediction == "u" else ""
        return (f"omega {self.omega:g}, interval [{self.t_min:g}, {self.t_max:g}], {self.steps} step(s){ema}{pred} "
                f"({self.source})")


def default_setting(config: ModelConfig, train_config: dict | None = None,
                    emas: Sequence[str] = ()) -> SamplingSetting:
    """The sampling setting a checkpoint should be used with unless the user says otherwise.

    A model of a released preset gets the released setting (spec section 4: omega, interval, and the EMA
    half-life of the released weights where ``emas`` has it). Otherwise a training checkpoint gets its
    recipe's sampling setting (``train_config["sample"]``) with its first EMA; anything else omega 1 on [0, 1].
    The prediction type is the training loss's (``train_config["loss"]["prediction"]``), else x."""
    train_config = train_config or {}
    prediction = (train_config.get("loss") or {}).get("prediction", "x")
    arch = train_config.get("arch") or preset_of(config)
    first = next(iter(emas), None)
    rel = released(arch)
    if rel is not None:
        name = ema_name("halflife", rel.ema_halflife_kimg)
        return SamplingSetting(rel.omega, rel.t_min, rel.t_max, 1, name if name in emas else first,
                               f"the released setting of {arch}", prediction)
    cfg = train_config.get("sample")
    if cfg:
        return SamplingSetting(cfg["omega"], cfg["t_min"], cfg["t_max"], 1, first,
                               "the training recipe's sampling setting", prediction)
    return SamplingSetting(ema=first, prediction=prediction)


# ---- the setting of an exported file ---------------------------------------------------------------------------

def exported_setting(recorded: dict | None, fallback: SamplingSetting) -> SamplingSetting:
    """The setting an export recorded (its weights are those of the recorded EMA, so ``ema`` is None: the
    file's weights); ``fallback`` for exports written before exports recorded it."""
    if not recorded:
        return fallback
    of = f", EMA {recorded['ema']}" if recorded.get("ema") else ""
    return SamplingSetting.from_dict(recorded, ema=None,
                                     source=f"recorded in the export: {recorded.get('source', 'unknown')}{of}")


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where a release-format export keeps its setting and class names: ``NAME.sampling.json`` beside
    ``NAME.pt`` (the state dict itself stays exactly the release's, for the release's own loader)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.sampling.json")


def read_sidecar_file(spec) -> dict:
    """Every field recorded beside a local release-format export (``sidecar_path``); {} without one."""
    path = Path(str(spec)).expanduser()
    side = sidecar_path(path)
    if str(spec).startswith(("hf:", "http://", "https://")) or not side.is_file():
        return {}
    try:
        fields = json.loads(side.read_text())
    except (OSError, ValueError):
        fields = None
    if not isinstance(fields, dict):
        raise PMFError(f"{str(side)!r} beside the checkpoint is not a readable setting file")
    return fields


def read_sidecar(spec, field: str = "sampling_setting"):
    """A field recorded beside a local release-format export: its ``sampling_setting`` (default) or another;
    None without one."""
    return read_sidecar_file(spec).get(field)
