"""The names of what the commands write into their folders, in one place: a training run's folder (``pmf train``,
``pmf demo``) and a folder of samples (``pmf sample``, ``pmf eval``); and what a ``--resume`` value asks of a
run folder. The trainer, the resume, the loading of a run folder, sample, eval, plot and demo take their paths
from here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RESUME_AUTO = "auto"  # --resume auto: the newest checkpoint of the run folder, if it has one


def resume_given(resume: str | None) -> bool:
    """Whether a ``--resume`` value asks to continue a run: None, "" and "none" start a new one."""
    return resume not in (None, "", "none")


@dataclass(frozen=True)
class RunFolder:
    """A training run's folder (``TrainConfig.out``): its checkpoints, sample grids, metrics and records."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> RunFolder:
        """The run folder of a checkpoint in its ``checkpoints/`` (a file or a sharded folder)."""
        return cls(Path(checkpoint).parent.parent)

    @property
    def checkpoints(self) -> Path:
        """The training checkpoints (``pmf.checkpoints.files`` names them)."""
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        """The sample grids drawn during training (``grid``)."""
        return self.root / "samples"

    def grid(self, step: int) -> Path:
        """The sample grid drawn after ``step`` steps."""
        return self.samples / f"step_{step:08d}.png"

    @property
    def metrics(self) -> Path:
        """One JSON line per logged step."""
        return self.root / "metrics.jsonl"

    @property
    def config(self) -> Path:
        """The resolved training config of the run."""
        return self.root / "config.json"

    @property
    def data(self) -> Path:
        """The data's resize rule, beside the config that names the data (only for resized data)."""
        return self.root / "data.json"

    @property
    def summary(self) -> Path:
        """What ``pmf.training.loop.train`` returned at the end of the run."""
        return self.root / "summary.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def wandb_id(self) -> Path:
        """The Weights & Biases run that a resume continues."""
        return self.root / "wandb_id"

    @property
    def demo_metrics(self) -> Path:
        """``pmf demo``'s timing and scores."""
        return self.root / "demo_metrics.json"

    @property
    def outputs(self) -> tuple[Path, ...]:
        """What a run writes that ``--overwrite`` deletes before a new run in the folder."""
        return self.checkpoints, self.metrics, self.summary, self.samples, self.tensorboard, self.config


@dataclass(frozen=True)
class SampleFolder:
    """A folder of generated images: ``pmf sample``'s (PNGs beside the npz) or ``pmf eval``'s (PNGs in
    ``samples/``, with ``--save-png``)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def npz(self) -> Path:
        """The images (uint8) and labels (int64) as arrays."""
        return self.root / "samples.npz"

    @property
    def grid(self) -> Path:
        return self.root / "grid.png"

    @property
    def settings(self) -> Path:
        """``pmf sample``'s flags with the resolved sampling setting."""
        return self.root / "sample_settings.json"

    @property
    def pngs(self) -> Path:
        """``pmf eval``'s PNGs."""
        return self.root / "samples"

    @property
    def own_files(self) -> tuple[Path, ...]:
        """The files besides its numbered PNGs that ``pmf sample`` writes (and removes before writing anew)."""
        return self.grid, self.npz, self.settings
