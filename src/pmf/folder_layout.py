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


def _part(name: str, doc: str) -> property:
    """A path of the folder: ``root / name``."""
    return property(lambda self: self.root / name, doc=doc)


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

    checkpoints = _part("checkpoints", "the training checkpoints (pmf.checkpoints.files names them)")
    samples = _part("samples", "the sample grids drawn during training (``grid``)")
    metrics = _part("metrics.jsonl", "one JSON line per logged step")
    config = _part("config.json", "the resolved training config of the run")
    data = _part("data.json", "the data's resize rule, beside the config that names the data (resized data only)")
    summary = _part("summary.json", "what pmf.training.loop.train returned at the end of the run")
    tensorboard = _part("tensorboard", "TensorBoard's event files")
    wandb_id = _part("wandb_id", "the Weights & Biases run that a resume continues")
    demo_metrics = _part("demo_metrics.json", "pmf demo's timing and scores")

    def grid(self, step: int) -> Path:
        """The sample grid drawn after ``step`` steps."""
        return self.samples / f"step_{step:08d}.png"

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

    npz = _part("samples.npz", "the images (uint8) and labels (int64) as arrays")
    grid = _part("grid.png", "the images in one picture")
    settings = _part("sample_settings.json", "pmf sample's flags with the resolved sampling setting")
    pngs = _part("samples", "pmf eval's PNGs (--save-png)")

    @property
    def own_files(self) -> tuple[Path, ...]:
        """The files besides its numbered PNGs that ``pmf sample`` writes (and removes before writing anew)."""
        return self.grid, self.npz, self.settings
