"""Sharded training checkpoints through ``torch.distributed.checkpoint`` (DCP).

A checkpoint is a folder ``OUT/checkpoints/step_XXXXXXXX/`` holding DCP's files (each rank writes its own
shards, ``.metadata`` describes them) and ``meta.json`` (format, step, model and training configs, the EMA
names, the world size and parallel mode that wrote it). The state is the flat, layout-independent dictionary
of ``pmf.training.state``; reading one weight set (``read_weights``) needs no optimiser or trainer.

Under FSDP2 / HSDP the tensors are DTensors and each rank writes and reads its shards; under DDP or in one
process they are plain tensors. DCP reshards on load, so a checkpoint resumes under another world size and
another ``--parallel`` mode.

Atomicity: every rank writes into ``.step_XXXXXXXX.tmp/``; after all ranks finished (a barrier) rank 0 writes
``meta.json`` and renames the folder to ``step_XXXXXXXX`` (an atomic rename). An interrupted save leaves only
the hidden temporary folder, which ``list_checkpoints`` ignores and the next save of that step replaces."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from ..ema_choice import RAW
from ..errors import CheckpointError
from ..parallel.process import barrier, rank_world
from .files import (
    FORMAT,
    META,
    checkpoint_path,
    fsync_dir,
    is_sharded_checkpoint,
    prune_checkpoints,
    save_atomic,
)

__all__ = ["META", "ShardedSaver", "dcp_load", "is_sharded_checkpoint", "read_meta", "read_weights",
           "stored_tensors"]


def read_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not is_sharded_checkpoint(path):
        raise CheckpointError(f"{str(path)!r} is not a sharded checkpoint folder (no .metadata or {META})")
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{str(path / META)!r} is not readable ({err})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a {FORMAT} checkpoint")
    return meta


def stored_tensors(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of every tensor of a DCP checkpoint, by key."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(str(path)).read_metadata()
    return {k: (tuple(v.size), v.properties.dtype) for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


def dcp_load(state: dict, path, no_dist: bool) -> None:
    """``dcp.load`` in place; in one process without its warning that it assumes one process."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, checkpoint_id=str(path), no_dist=no_dist)


class ShardedSaver:
    """Writes DCP checkpoints atomically; with ``asynchronous`` the write of one checkpoint overlaps training
    and is completed (renamed into place) before the next save or at ``finish``."""

    def __init__(self, directory: Path, keep_last: int, asynchronous: bool = False):
        self.directory, self.keep_last, self.asynchronous = Path(directory), keep_last, asynchronous
        self.pending = None
        # A background save runs its collectives in another thread: they get their own (gloo) group, apart
        # from the training's collectives. Created on every rank (a collective call).
        self.group = dist.new_group(backend="gloo") if asynchronous and dist.is_initialized() else None

    def save(self, step: int, state: dict, meta: dict) -> Path:
        import torch.distributed.checkpoint as dcp

        self.finish()
        final = checkpoint_path(self.directory, step).with_suffix("")
        tmp = final.with_name(f".{final.name}.tmp")
        if rank_world()[0] == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        if self.asynchronous:
            future = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self.group)
            self.pending = (future, tmp, final, meta)
        else:
            with warnings.catch_warnings():  # in one process: its note that it assumes one process
                warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
                dcp.save(state, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
            self._complete(tmp, final, meta)
        return final

    def finish(self) -> None:
        """Wait for a background save and move it into place."""
        if self.pending is not None:
            future, tmp, final, meta = self.pending
            self.pending = None
            future.result()
            self._complete(tmp, final, meta)

    def _complete(self, tmp: Path, final: Path, meta: dict) -> None:
        barrier()  # every rank's shards are written
        if rank_world()[0] == 0:
            save_atomic(json.dumps({"format": FORMAT, **meta}, indent=2), tmp / META)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.directory)
            for stale in self.directory.glob(".step_*.tmp"):  # left by interrupted saves
                shutil.rmtree(stale, ignore_errors=True)
            prune_checkpoints(self.directory, self.keep_last)
        barrier()


def read_weights(path: str | os.PathLike, which: str = RAW) -> dict[str, torch.Tensor]:
    """Whole tensors of one weight set (``"raw"`` or an EMA name) of a DCP checkpoint, read in this process
    alone (no process group needed)."""
    prefix = "model/" if which == RAW else f"ema/{which}/"
    stored = stored_tensors(path)
    sd = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in stored.items() if k.startswith(prefix)}
    if not sd:
        raise CheckpointError(f"weights {which!r} are not in {str(path)!r}")
    dcp_load(sd, path, no_dist=True)
    return {k[len(prefix):]: v for k, v in sd.items()}
