"""The files of training checkpoints, with no model or trainer in sight: their names, listing and removal, and
atomic writes. A checkpoint is ``step_XXXXXXXX.pt`` (one file, with ``step_XXXXXXXX.json`` beside it) or the
sharded (DCP) folder ``step_XXXXXXXX/`` holding ``.metadata`` and ``meta.json`` (``pmf.checkpoints.sharded``); what
either holds is ``pmf.checkpoints.schema.TrainingCheckpoint``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

FORMAT = "pixel-meanflow"
CKPT_PREFIX, CKPT_SUFFIX = "step_", ".pt"
META = "meta.json"  # a sharded checkpoint's format, step and configs


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``: a crash at any
    moment leaves either the previous file or the complete new one, never a partial file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if isinstance(obj, (bytes, str)):
                f.write(obj.encode() if isinstance(obj, str) else obj)
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)  # make the rename durable
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename into it) to disk, where the file system allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def is_onnx(spec) -> bool:
    """An exported ONNX generator (run in onnxruntime), told by its suffix."""
    return str(spec).lower().endswith(".onnx")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"{CKPT_PREFIX}{step:08d}{CKPT_SUFFIX}"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / ".metadata").is_file() and (path / META).is_file()


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the complete training checkpoints in ``directory``, oldest first: single files
    ``step_XXXXXXXX.pt`` and sharded (DCP) folders ``step_XXXXXXXX`` (``pmf.checkpoints.sharded``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out = []
    for p in directory.glob(f"{CKPT_PREFIX}*"):
        is_file = p.name.endswith(CKPT_SUFFIX)
        digits = p.name[len(CKPT_PREFIX):len(p.name) - (len(CKPT_SUFFIX) if is_file else 0)]
        if not digits.isdigit() or p.is_dir() == is_file:
            continue
        if p.is_dir() and not is_sharded_checkpoint(p):
            continue
        out.append((int(digits), p))
    return sorted(out)


def prune_checkpoints(directory: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (files and sharded folders) of ``directory``;
    the one pruning rule of both writers, called only after a new checkpoint is complete."""
    for _, old in list_checkpoints(directory)[:-keep_last]:
        remove_checkpoint(old)


def remove_checkpoint(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
