"""The trainer's checkpoints: ``Checkpointer`` writes the training state of a run (one file from rank 0, or a
sharded DCP folder from every rank under FSDP2 / HSDP) and turns a failed write into ``CheckpointSaveError``,
which names the newest intact checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException

from ..checkpoints.files import list_checkpoints
from ..checkpoints.load import latest_checkpoint
from ..checkpoints.schema import TrainingCheckpoint, save_training_checkpoint
from ..checkpoints.sharded import ShardedSaver
from ..errors import PMFError
from ..folder_layout import RunFolder
from ..model_configs import ModelConfig
from ..parallel import process as D
from .build import Parts
from .config import TrainConfig
from .state import file_state, folder_state, optimizer_rule


class CheckpointSaveError(PMFError):
    """Writing the checkpoint of ``step`` failed (a full disk, a file-size limit, ...); ``intact`` is the newest
    complete checkpoint (None: none yet). Saves are atomic, so nothing earlier was touched."""

    def __init__(self, step: int, err: BaseException, intact: Path | None):
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no message'}"
        kept = f"the checkpoints before it are intact, the newest is {intact}" if intact else \
            "no earlier checkpoint exists"
        super().__init__(f"could not save the checkpoint of step {step} ({reason}; a full disk or a file-size "
                         f"limit?); {kept}")
        self.step, self.intact = step, intact


class Checkpointer:
    """Saves ``parts`` into ``OUT/checkpoints``, keeping the newest ``keep_last``; ``last_saved`` is the step
    of the newest checkpoint there (-1: none). ``extra_state``: more fields of a single-file checkpoint
    (``fd_stats``: the FD-loss statistics)."""

    def __init__(self, cfg: TrainConfig, mcfg: ModelConfig, parts: Parts, info: D.DistInfo,
                 class_names: list[str] | None = None, extra_state=None):
        self.cfg, self.mcfg, self.parts, self.info = cfg, mcfg, parts, info
        self.extra_state = extra_state
        self.class_names = class_names  # recorded in every checkpoint: they travel with the model
        self.directory = RunFolder(cfg.out).checkpoints
        # a collective (a process group for the background writes): created at the same point on every rank
        self.saver = ShardedSaver(self.directory, cfg.keep_last, cfg.async_checkpoint) if parts.sharded else None
        self.last_saved = max([s for s, _ in list_checkpoints(self.directory)], default=-1)

    def newest(self) -> Path | None:
        found = list_checkpoints(self.directory)
        return found[-1][1] if found else None

    def save(self, step: int) -> Path | None:
        """Write the state after ``step`` steps (every rank calls it); the path on rank 0, None elsewhere."""
        try:
            path = self._write_sharded(step) if self.saver is not None else self._write_file(step)
        except (OSError, RuntimeError, CheckpointException) as err:  # torch.save: RuntimeError; DCP: its own
            raise CheckpointSaveError(step, err, latest_checkpoint(self.directory)) from err
        self.last_saved = step
        return path if self.info.is_main else None

    def finish(self) -> None:
        """Complete a background write."""
        if self.saver is not None:
            self.saver.finish()

    def _checkpoint(self, step: int, **state) -> TrainingCheckpoint:
        """The checkpoint of ``step`` with ``state`` (a file's tensors, or a folder's parallel mode and rule)."""
        return TrainingCheckpoint(step, self.mcfg.to_dict(), self.cfg.to_dict(), class_names=self.class_names,
                                  world_size=self.info.world_size, **state)

    def _write_sharded(self, step: int) -> Path:  # every rank writes its shards
        p = self.parts
        meta = self._checkpoint(step, emas=p.emas.names, parallel=self.cfg.parallel,
                                optimizer_rule=optimizer_rule(p.optimizer)).to_meta()
        return self.saver.save(step, folder_state(p.model, p.optimizer, p.emas), meta)

    def _write_file(self, step: int) -> Path | None:
        path, failure = None, None
        if self.info.is_main:
            p = self.parts
            ckpt = self._checkpoint(step, **file_state(p.model, p.optimizer, p.emas),
                                    **(self.extra_state() if self.extra_state else {}))
            try:
                path = save_training_checkpoint(self.directory, ckpt, self.cfg.keep_last)
            except (OSError, RuntimeError) as err:
                failure = err
        # every rank learns whether rank 0 wrote the file (this is also the barrier): all stop together
        failed = D.all_reduce_max(torch.tensor([float(failure is not None)], device=self.info.device))
        if failed.item() > 0:
            raise failure or RuntimeError("rank 0 could not write the checkpoint")
        return path
