"""Run folders of the training commands (``pmf train``, ``pmf demo``): what a run writes, and the guard against
restarting over a run that holds checkpoints."""

from __future__ import annotations

from pathlib import Path

from ..errors import PMFError

RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "summary.json", "samples", "tensorboard", "config.json")


def guard_run_folder(out: str | Path, *, resume: str | None, overwrite: bool, flag: str = "--out") -> None:
    """Refuse to start a fresh run over a run folder with checkpoints (it would restart at step 0 and truncate
    metrics.jsonl); ``overwrite`` deletes that run's outputs first (on rank 0 only)."""
    import os
    import shutil

    from ..checkpoint import list_checkpoints

    out = Path(out)
    if resume not in (None, "", "none"):
        if overwrite:
            raise PMFError("--resume and --overwrite contradict each other: pick one")
        return
    found = list_checkpoints(out / "checkpoints")
    if not found:
        return
    if not overwrite:
        raise PMFError(f"{flag} {str(out)!r} already holds a run (checkpoints up to step {found[-1][0]}); continue "
                       "it with --resume auto, or start afresh with --overwrite (deletes its checkpoints and "
                       "metrics)")
    if int(os.environ.get("RANK", "0")) == 0:
        for name in RUN_OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        print(f"--overwrite: deleted the earlier run's outputs in {out}", flush=True)
