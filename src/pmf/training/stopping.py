"""Stopping a training run on request without losing it: Ctrl-C (SIGINT), SIGTERM (what SLURM sends at
preemption or the time limit, and Kubernetes on eviction) and SIGUSR1 (what SLURM setups send before a requeue,
``sbatch --signal=USR1@120``). The first signal asks the loop to finish the running step and save a checkpoint
at it; every process of a run agrees on the step (a collective each step), so ranks that saw the signal at
different steps still stop together. A second signal stops at once. The run then exits with 128 + the signal
number (130 Ctrl-C, 138 SIGUSR1, 143 SIGTERM), the code a shell gives a process ended by that signal."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

from ..parallel.process import is_main_process

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# the same signal delivered twice within this many seconds counts once: a terminal's Ctrl-C reaches torchrun's
# workers both directly and through torchrun, which passes the signals it receives on to them
REPEAT_S = 1.0


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """The exit status of a run stopped by ``signum``: 128 + its number, as a shell reports a killed process."""
    return 128 + int(signum)


class Stopped(KeyboardInterrupt):
    """A second signal: the run stops at once, mid-step."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = signum


class StopRequest:
    """The signals a run received. ``installed()`` handles ``SIGNALS`` while training runs; the loop asks
    ``agreed(device)`` after each step."""

    def __init__(self):
        self.signum, self.at, self.pid = 0, 0.0, os.getpid()

    def handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:  # a forked data-loading process: the training process decides
            return
        now = time.monotonic()
        if self.signum:
            if now - self.at < REPEAT_S:
                return
            raise Stopped(signum)
        self.signum, self.at = signum, now
        if is_main_process():
            again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
            print(f"\n{signal_name(signum)}: stopping after this step and saving a checkpoint ({again} stops at "
                  "once)", file=sys.stderr, flush=True)

    def request(self, signum: int) -> None:
        """Ask for a stop as the signal ``signum`` would (for callers that stop a run themselves)."""
        self.signum, self.at = signum, time.monotonic()

    def agreed(self, device) -> int:
        """The signal every process of the run acts on now (0: go on); a collective under a process group."""
        import torch
        import torch.distributed as dist

        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return self.signum
        flag = torch.tensor([float(self.signum)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    @contextlib.contextmanager
    def installed(self):
        """Handle ``SIGNALS`` inside the block (on the main thread only; elsewhere signals keep their effect)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self.handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
