"""A training job under torchrun (FSDP2, 2 CPU processes) with one rank killed: the job stops, and --resume auto
finishes it with the weights and EMAs of an uninterrupted run."""

import os
import sys

import pytest

from helpers import ema_names
from helpers import rel_frobenius as rel
from pmf.checkpoints.load import list_checkpoints, load_model
from pmf.parallel.process import free_port

pytestmark = pytest.mark.usefixtures("one_thread")


def _torchrun(out, *extra, nproc=2):
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "-m", "pmf.cli", "train", "--recipe", "tiny", "--steps", "12", "--ckpt-every", "3", "--keep-last", "10",
           "--num-workers", "0", "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


@pytest.mark.slow
def test_sigkill_of_one_rank_stops_the_job_and_resume_auto_finishes_it(tmp_path):
    """torchrun --nproc_per_node=2 -m pmf.cli train --recipe tiny --parallel fsdp: one worker killed with
    SIGKILL after the checkpoint of step 6 stops the job; --resume auto then finishes, and the final weights
    and EMAs equal those of an uninterrupted run."""
    import signal
    import time

    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = _torchrun(full, "--parallel", "fsdp")
    assert proc.wait(timeout=900) == 0, proc.stderr.read()[-3000:]
    proc = _torchrun(killed, "--parallel", "fsdp")
    deadline = time.time() + 900
    while not (killed / "checkpoints" / "step_00000006").is_dir():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its checkpoint of step 6"
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    assert proc.wait(timeout=300) != 0  # the job stops
    steps = [s for s, _ in list_checkpoints(killed / "checkpoints")]
    assert 6 <= max(steps) < 12
    proc = _torchrun(killed, "--parallel", "fsdp", "--resume", "auto")
    assert proc.wait(timeout=900) == 0, proc.stderr.read()[-3000:]
    worst = 0.0
    for ema in ("raw", *ema_names(full / "checkpoints" / "step_00000012")):
        a = load_model(killed / "checkpoints" / "step_00000012", ema=ema).state_dict()
        b = load_model(full / "checkpoints" / "step_00000012", ema=ema).state_dict()
        for k in a:
            worst = max(worst, rel(a[k], b[k]))
    print(f"resumed after SIGKILL vs uninterrupted: max relative difference {worst:.1e}")
    assert worst <= 1e-6
