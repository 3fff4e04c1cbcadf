"""The training checkpoint as one type: ``TrainingCheckpoint`` is what every writer builds and every reader gets,
for both forms of a checkpoint (``pmf.checkpoints.files``):

- a single file ``step_XXXXXXXX.pt``: ``to_payload`` / ``from_payload``, the dictionary ``torch.save`` writes
  (``format``, ``step``, ``model_config``, ``train_config``, ``model``, ``optimizer``, ``ema`` and the optional
  ``world_size``, ``class_names``, ``fd_stats``), with the training config beside it as ``step_XXXXXXXX.json``
  (``write_checkpoint_file``, the one writer of both files);
- a sharded (DCP) folder's ``meta.json``: ``to_meta`` / ``from_meta``, the same fields less the tensors (the EMA
  names instead of their weights; the parallel mode and the optimiser's update rule that wrote it).

The keys are those checkpoints have always had, so files and folders written before this type existed read as
they are; missing optional keys read as None. An export of one weight set (``pmf export`` to ``.safetensors``)
reads as a checkpoint with ``export`` set and the setting it was exported with."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import CheckpointError
from .files import FORMAT, checkpoint_path, prune_checkpoints, save_atomic

_FILE_ONLY = ("model", "optimizer", "ema", "fd_stats")  # tensors: in the file, not in a folder's meta.json
_META_ONLY = ("emas", "parallel", "optimizer_rule")
_LOCAL = ("sharded",)  # how it was read, never written


@dataclass
class TrainingCheckpoint:
    """One training checkpoint: the step it was saved after, its configs, and its state (``pmf.training.state``
    says how the state is laid out). Read from a DCP folder, ``model``, ``optimizer`` and ``ema`` are None (DCP
    reads the tensors into a built model) and ``sharded`` is set."""

    step: int
    model_config: dict
    train_config: dict = field(default_factory=dict)
    model: dict | None = None  # raw weights, name -> tensor
    optimizer: dict | None = None  # the optimiser's state dict (by parameter name; older files: by index)
    ema: dict[str, dict] | None = None  # EMA name -> its weights
    emas: list[str] | None = None  # the EMA names (a folder's meta; a file's are the keys of ``ema``)
    class_names: list[str] | None = None  # one per class row where the data names them
    world_size: int | None = None
    parallel: str | None = None  # the --parallel mode that wrote a DCP folder
    optimizer_rule: str | None = None  # the update rule of a DCP folder's optimiser (pmf.training.optim.RULE)
    fd_stats: dict | None = None  # the FD loss's generated statistics (pmf.posttrain.fd_stats), FD runs only
    export: bool = False  # one weight set written by pmf export: no optimiser, the setting below
    sampling_setting: dict | None = None  # an export's setting (pmf.sampling_setting.SamplingSetting.to_dict)
    record: dict | None = None  # an export's model record (pmf.checkpoints.export_record.FIELDS), where it has one
    sharded: bool = False  # read from a DCP folder

    def __post_init__(self) -> None:
        if self.emas is None and self.ema is not None:
            self.emas = list(self.ema)

    @property
    def ema_names(self) -> list[str]:
        return list(self.emas or [])

    @property
    def resumable(self) -> bool:
        """Whether it holds an optimiser state to resume from (a folder always does)."""
        return not self.export and (self.sharded or self.optimizer is not None)

    def to_payload(self) -> dict:
        """The dictionary of a single file (``torch.save``), in the keys files have always had."""
        out = {"format": FORMAT, **self._present(exclude=_META_ONLY + _LOCAL)}
        if not self.export:
            out.pop("export", None)
        return out

    def to_meta(self) -> dict:
        """The ``meta.json`` of a DCP folder: no tensors, the EMA names instead."""
        export_only = ("export", "sampling_setting", "record")
        return {"format": FORMAT, **self._present(exclude=_FILE_ONLY + _LOCAL + export_only),
                "emas": self.ema_names}

    @classmethod
    def from_payload(cls, obj: dict) -> TrainingCheckpoint:
        """A single file's dictionary (any version, or an export's); unknown keys are ignored."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise CheckpointError(f"not a {FORMAT} training checkpoint")
        known = {f.name for f in fields(cls)} - set(_LOCAL)
        values = {k: v for k, v in obj.items() if k in known and v is not None}
        values.setdefault("step", 0)  # exports record none
        if "model_config" not in values:
            raise CheckpointError(f"the {FORMAT} checkpoint records no model_config")
        return cls(**values)

    @classmethod
    def from_meta(cls, meta: dict) -> TrainingCheckpoint:
        """A DCP folder's ``meta.json`` (read by ``pmf.checkpoints.sharded.read_meta``)."""
        ckpt = cls.from_payload({k: v for k, v in meta.items() if k not in _FILE_ONLY})
        ckpt.sharded = True
        return ckpt

    def _present(self, exclude: tuple[str, ...]) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in exclude and getattr(self, f.name) is not None}


def sidecar_of(path: str | os.PathLike) -> Path:
    """The training config's file beside a single-file checkpoint: ``step_XXXXXXXX.json``."""
    return Path(path).with_suffix(".json")


def write_checkpoint_file(ckpt: TrainingCheckpoint, path: str | os.PathLike) -> Path:
    """The one writer of a single-file checkpoint: the payload, then its training config beside it, both
    atomically (every single file, a plain run's or a rewritten DCP folder's, has the same two files)."""
    path = save_atomic(ckpt.to_payload(), path)
    save_atomic(json.dumps(ckpt.train_config, indent=2), sidecar_of(path))
    return path


def recorded_train_config(path: str | os.PathLike) -> dict | None:
    """The training config a checkpoint records, without reading its tensors: a folder's ``meta.json``, a file's
    sidecar, or (a file without one) the payload's ``train_config``; None if it records none."""
    from .sharded import read_meta

    path = Path(path)
    if path.is_dir():
        return read_meta(path).get("train_config")
    if sidecar_of(path).is_file():
        return json.loads(sidecar_of(path).read_text())
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("train_config")


def read_checkpoint(obj: dict | TrainingCheckpoint) -> TrainingCheckpoint:
    """``obj`` as a ``TrainingCheckpoint`` (a single file's dictionary is read by ``from_payload``)."""
    return obj if isinstance(obj, TrainingCheckpoint) else TrainingCheckpoint.from_payload(obj)


def save_training_checkpoint(directory: str | os.PathLike, ckpt: TrainingCheckpoint, keep_last: int = 3) -> Path:
    """Write ``ckpt`` as ``directory/step_XXXXXXXX.pt`` with its sidecar (``write_checkpoint_file``), then delete
    all but the newest ``keep_last`` checkpoints (only after the new one is complete)."""
    path = write_checkpoint_file(ckpt, checkpoint_path(directory, ckpt.step))
    prune_checkpoints(directory, keep_last)
    return path
