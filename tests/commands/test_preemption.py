"""``pmf train`` stopped by a scheduler's signal, as real processes: SIGTERM (or SIGUSR1) mid-run finishes the
step, saves a checkpoint at it on every rank together, prints how to resume and exits 128 + the signal number;
the resumed run equals an uninterrupted one to the bit. Ctrl-C's message is printed once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pmf.checkpoints.load import list_checkpoints, read_file
from pmf.cli import main
from pmf.parallel.process import free_port

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def tiny(out, *extra):
    return ["train", "--recipe", "tiny", "--out", str(out), "--sample-every", "0", "--log-every", "1",
            "--ckpt-every", "1000", *extra]


def launch(argv, world: int = 1, workers: int = 0) -> list[subprocess.Popen]:
    """``pmf`` as ``world`` processes, each a rank of a gloo group (as srun or torchrun start them)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    if world > 1:
        env.update(WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    procs = []
    for rank in range(world):
        rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)} if world > 1 else env
        procs.append(subprocess.Popen([sys.executable, "-m", "pmf.cli", *argv, "--workers", str(workers)],
                                      env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True))
    return procs


def signal_mid_run(procs, out: Path, signum: int, to=None, after_step: int = 2) -> list[tuple[int, str]]:
    """Send ``signum`` to the processes ``to`` (default all) with their data-loading processes (as a terminal's
    Ctrl-C or a scheduler reaches all of a job) once the run logged ``after_step``; their (exit status, stderr)."""
    try:
        deadline = time.time() + 120
        while len((out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []) \
                < after_step:
            assert all(p.poll() is None for p in procs) and time.time() < deadline, procs[0].communicate()
            time.sleep(0.05)
        for p in (procs if to is None else to):
            os.killpg(p.pid, signum)
        errs = [p.communicate(timeout=120)[1] for p in procs]
        return [(p.returncode, e) for p, e in zip(procs, errs)]
    finally:
        for p in procs:
            p.kill()


def stopped_step(stderr: str, name: str) -> int:
    line = next(ln for ln in stderr.splitlines() if ln.startswith(f"pmf train: stopped by {name} at step "))
    return int(line.split(" at step ")[1].split(";")[0])


def same_state(a: Path, b: Path) -> None:
    """Two training checkpoint files hold the same weights, EMAs and optimiser state, to the bit."""
    def tensors(obj, prefix=""):
        if torch.is_tensor(obj):
            yield prefix, obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                yield from tensors(v, f"{prefix}.{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                yield from tensors(v, f"{prefix}.{i}")

    ta = dict(tensors({k: read_file(a)[k] for k in ("model", "ema", "optimizer")}))
    tb = dict(tensors({k: read_file(b)[k] for k in ("model", "ema", "optimizer")}))
    assert ta.keys() == tb.keys() and len(ta) > 50
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_sigterm_saves_the_step_and_resumes_to_the_bit(tmp_path, capsys):
    out = tmp_path / "run"
    argv = tiny(out, "--steps", "100000")
    [(code, err)] = signal_mid_run(launch(argv, workers=2), out, signal.SIGTERM)
    assert code == 143, err
    step = stopped_step(err, "SIGTERM")
    assert step >= 2 and f"the last checkpoint is {out / 'checkpoints' / f'step_{step:08d}.pt'}" in err
    assert err.count("SIGTERM: stopping after this step") == 1  # not once per data-loading process
    resume = next(ln for ln in err.splitlines() if ln.startswith("resume with: ")).removeprefix("resume with: ")
    assert resume.endswith("--resume auto")
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [step]  # saved at the step reached
    assert main([*argv, "--workers", "0", "--steps", str(step + 1), "--resume", "auto"]) == 0
    assert main(tiny(tmp_path / "ref", "--steps", str(step + 1), "--workers", "0")) == 0
    name = f"step_{step + 1:08d}.pt"
    same_state(out / "checkpoints" / name, tmp_path / "ref" / "checkpoints" / name)


@pytest.mark.slow  # three pairs of processes: about 40 s on 2 busy cores
def test_two_ranks_stop_at_one_step_when_one_of_them_is_signalled(tmp_path):
    """SIGUSR1 to rank 1 only: both ranks agree on the step, save it and exit 138; the resumed pair of processes
    equals an uninterrupted pair to the bit."""
    out, ref = tmp_path / "run", tmp_path / "ref"
    argv = tiny(out, "--steps", "100000")
    procs = launch(argv, world=2)
    (code0, err0), (code1, err1) = signal_mid_run(procs, out, signal.SIGUSR1, to=procs[1:])
    assert (code0, code1) == (138, 138), err0 + err1
    step = stopped_step(err0, "SIGUSR1")
    assert "stopped by" not in err1  # rank 0 speaks for the run
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [step]
    resumed = launch([*argv, "--steps", str(step + 1), "--resume", "auto"], world=2)
    reference = launch(tiny(ref, "--steps", str(step + 1)), world=2)
    for p in resumed + reference:
        assert p.wait(timeout=180) == 0, p.communicate()
    name = f"step_{step + 1:08d}.pt"
    same_state(out / "checkpoints" / name, ref / "checkpoints" / name)


def test_an_fsdp_run_writes_its_sharded_checkpoint_on_sigterm(tmp_path, capsys):
    out = tmp_path / "run"
    argv = tiny(out, "--steps", "100000", "--parallel", "fsdp")
    [(code, err)] = signal_mid_run(launch(argv), out, signal.SIGTERM)
    assert code == 143, err
    step = stopped_step(err, "SIGTERM")
    folder = out / "checkpoints" / f"step_{step:08d}"
    assert [p for _, p in list_checkpoints(out / "checkpoints")] == [folder] and any(folder.glob("*.distcp"))
    capsys.readouterr()
    assert main([*argv, "--workers", "0", "--steps", str(step + 1), "--resume", "auto"]) == 0
    assert f"resumed from {folder} at step {step}" in capsys.readouterr().out


def test_a_second_signal_stops_at_once_and_a_repeated_delivery_counts_once(monkeypatch, capsys):
    from pmf.training import stopping

    clock = [100.0]
    monkeypatch.setattr(stopping.time, "monotonic", lambda: clock[0])
    stop = stopping.StopRequest()
    stop.handle(signal.SIGTERM, None)
    assert stop.agreed(torch.device("cpu")) == signal.SIGTERM
    assert capsys.readouterr().err.count("SIGTERM: stopping after this step") == 1
    clock[0] += 0.1
    stop.handle(signal.SIGTERM, None)  # the same signal passed on by a launcher: still the first
    clock[0] += 5
    with pytest.raises(stopping.Stopped) as stopped:
        stop.handle(signal.SIGTERM, None)
    from pmf.commands._runs import report_interrupt
    from pmf.training.recipes import recipe

    assert report_interrupt(stopped.value, recipe("tiny"), ["train"]) == 143
    assert "pmf train: stopped by SIGTERM mid-step" in capsys.readouterr().err


def test_an_interrupted_demo_saves_its_step_and_resumes(tmp_path, monkeypatch, capsys):
    from pmf.training import stopping

    asked = []

    def agreed(self, device):  # a signal arrives during step 2
        asked.append(device)
        return signal.SIGTERM if len(asked) == 2 else 0

    monkeypatch.setattr(stopping.StopRequest, "agreed", agreed)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--steps", "3", "--no-score", "--no-progress", "--threads", "1"]
    assert main(argv) == 143
    err = capsys.readouterr().err
    ckpt = out / "checkpoints" / "step_00000002.pt"
    assert f"pmf demo: stopped by SIGTERM at step 2; the last checkpoint is {ckpt}" in err
    assert f"resume with: pmf {' '.join(argv)} --resume auto" in err
    assert main([*argv, "--resume", "auto"]) == 0
    assert f"resumed from {ckpt} at step 2" in capsys.readouterr().out


def test_resume_auto_without_a_checkpoint_says_it_starts_at_step_0(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny(out, "--steps", "1", "--workers", "0", "--resume", "auto")) == 0
    assert f"--resume auto: no checkpoint in {out / 'checkpoints'} yet; starting at step 0" in capsys.readouterr().err
