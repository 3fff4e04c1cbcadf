"""Weights & Biases logging of a training run (``pmf train --wandb PROJECT``, pip install 'pixel-meanflow[wandb]'),
beside metrics.jsonl and TensorBoard: the same scalars at the same steps, the sample grids, and the run's config.
The W&B run id is kept in the run folder (``wandb_id``), so a resumed run continues the same W&B run.
``WANDB_MODE=offline`` logs without network into ``OUT/wandb`` (``wandb sync`` uploads it later)."""

from __future__ import annotations

import secrets
from pathlib import Path

from ..extras import needs
from ..folder_layout import RunFolder


def import_wandb():
    """The wandb module, or a one-line error naming the extra to install."""
    with needs("wandb", "--wandb needs the wandb package"):
        import wandb
    return wandb


class WandbRun:
    """One W&B run for a run folder: ``log`` a metrics record, ``image`` a sample grid, ``finish``."""

    def __init__(self, project: str, out: Path, config: dict, *, resumed: bool):
        wandb = import_wandb()
        self.wandb, out = wandb, Path(out)
        id_file = RunFolder(out).wandb_id
        run_id = id_file.read_text().strip() if resumed and id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=project, id=run_id, resume="allow", name=out.resolve().name, dir=str(out),
                              config=config)
        self.run.define_metric("*", step_metric="step")  # plot against the training step, as TensorBoard does

    def log(self, record: dict) -> None:
        """A metrics.jsonl record (``step`` and scalars)."""
        self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))})

    def image(self, path: Path, step: int) -> None:
        """A sample grid saved at ``path`` after ``step`` steps."""
        self.run.log({"step": step, "samples": self.wandb.Image(str(path), caption=f"step {step}")})

    def finish(self) -> None:
        self.run.finish()
