"""Run folders of the training commands (``pmf train``, ``pmf demo``): what a run writes, the guard against
restarting over a run that holds checkpoints, and what a stopped run says (where it stopped, how to resume)."""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

from ..errors import PMFError
from ..folder_layout import RunFolder, resume_given
from ..parallel.process import is_main_process, world_size


def guard_run_folder(out: str | Path, *, resume: str | None, overwrite: bool, flag: str = "--out") -> None:
    """Refuse to start a fresh run over a run folder with checkpoints (it would restart at step 0 and truncate
    metrics.jsonl); ``overwrite`` deletes that run's outputs first (on rank 0 only)."""
    import shutil

    from ..checkpoints.load import list_checkpoints

    out = Path(out)
    if resume_given(resume):
        if overwrite:
            raise PMFError("--resume and --overwrite contradict each other: pick one")
        return
    found = list_checkpoints(RunFolder(out).checkpoints)
    if not found:
        return
    if not overwrite:
        raise PMFError(f"{flag} {str(out)!r} already holds a run (checkpoints up to step {found[-1][0]}); continue "
                       "it with --resume auto, or start afresh with --overwrite (deletes its checkpoints and "
                       "metrics)")
    if is_main_process():
        for path in RunFolder(out).outputs:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        print(f"--overwrite: deleted the earlier run's outputs in {out}", flush=True)


def resume_command(argv: list[str] | None) -> str:
    """The command line that continues this run: the original one with ``--resume auto`` (and without
    ``--overwrite``, which would delete the run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not (a.startswith("--resume=") or a == "--overwrite"):
            kept.append(a)
    return shlex.join(["pmf", *kept, "--resume", "auto"])


def report_interrupt(stop: KeyboardInterrupt, cfg, argv: list[str] | None, command: str = "train"
                     ) -> int:
    """Print (on rank 0) where the run stopped and the command that resumes it; returns the exit status."""
    from ..checkpoints.load import latest_checkpoint
    from ..training.stopping import exit_code, signal_name

    signum = getattr(stop, "signum", signal.SIGINT)
    if not is_main_process():
        return exit_code(signum)
    ckpt = getattr(stop, "checkpoint", None) or latest_checkpoint(RunFolder(cfg.out).checkpoints)
    where = f"at step {stop.step}" if hasattr(stop, "step") else "mid-step"
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal_name(signum)}"
    if ckpt is None:
        print(f"pmf {command}: {how} {where}; no checkpoint was saved yet, so there is nothing to resume",
              file=sys.stderr, flush=True)
        return exit_code(signum)
    again = resume_command(argv)
    if world_size() != 1:
        again += "  (under the same torchrun or srun launch as before)"
    print(f"pmf {command}: {how} {where}; the last checkpoint is {ckpt}\nresume with: {again}",
          file=sys.stderr, flush=True)
    return exit_code(signum)
