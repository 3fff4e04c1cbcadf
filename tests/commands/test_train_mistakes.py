"""``pmf train``'s answers to a newcomer's mistakes and accidents, each one line: an output folder that cannot be
made, a config file that is not JSON, a finished run resumed, and a checkpoint that cannot be written."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def tiny(out, *extra):
    return ["train", "--recipe", "tiny", "--out", str(out), "--sample-every", "0", "--no-progress", *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    errors = [ln for ln in err.splitlines() if ln.startswith("pmf train: error: ")]
    assert len(errors) == 1 and err.endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def test_an_output_folder_that_cannot_be_made(capsys):
    assert main(tiny("/proc/x/run", "--steps", "1")) == 2
    assert "cannot create the output folder '/proc/x/run'" in one_line_error(capsys)


def test_a_config_file_that_is_not_json(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("lr = 0.1\n")
    assert main(tiny(tmp_path / "r", "--config", str(notes))) == 2
    assert f"--config {str(notes)!r} is not JSON (line 1: Expecting value)" in one_line_error(capsys)
    notes.write_bytes(b"\xff\xfe\x00binary")
    assert main(tiny(tmp_path / "r", "--config", str(notes))) == 2
    assert "is not JSON" in one_line_error(capsys)
    notes.write_text("[1, 2]")
    assert main(tiny(tmp_path / "r", "--config", str(notes))) == 2
    assert "holds a JSON list, not an object of config fields" in one_line_error(capsys)


def test_resuming_with_other_emas_names_the_run_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny(out, "--steps", "2", "--ckpt-every", "2")) == 0
    capsys.readouterr()
    assert main(tiny(out, "--steps", "4", "--ema-decays", "0.5", "--resume", "auto")) == 2
    line = one_line_error(capsys)
    assert "--ema-decays [0.5] (the run has [0.9])" in line and str(out / "config.json") in line
    # another ramp-up would make the record lie about the EMAs too: refused; without it the run resumes
    assert main(tiny(out, "--steps", "3", "--ckpt-every", "3", "--ema-rampup", "0.1", "--resume", "auto")) == 2
    assert "--ema-rampup 0.1 (the run has 0.05)" in one_line_error(capsys)
    assert main(tiny(out, "--steps", "3", "--ckpt-every", "3", "--resume", "auto")) == 0


def test_resuming_a_finished_run_says_so_and_succeeds(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny(out, "--steps", "2", "--ckpt-every", "2")) == 0
    summary = json.loads(capsys.readouterr().out)
    metrics = (out / "metrics.jsonl").read_text()
    assert main(tiny(out, "--steps", "2", "--ckpt-every", "2", "--resume", "auto")) == 0  # exit 0: nothing failed
    captured = capsys.readouterr()
    said = [ln for ln in captured.err.splitlines() if "nothing to do" in ln]
    assert len(said) == 1 and "step_00000002.pt is at step 2 and --steps is 2; the run is finished" in said[0]
    assert json.loads(captured.out) == summary  # stdout: the run's own summary, unchanged
    assert (out / "metrics.jsonl").read_text() == metrics and json.loads((out / "summary.json").read_text()) \
        == summary


def test_a_failed_save_names_the_intact_checkpoint_and_the_resume_command(tmp_path, capsys, monkeypatch):
    import torch

    out = tmp_path / "run"
    save, calls = torch.save, []

    def full_disk(obj, f, *a, **k):  # the second checkpoint meets a full disk after a partial write
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    argv = tiny(out, "--steps", "4", "--ckpt-every", "2")
    assert main(argv) == 2
    err = one_line_error(capsys)
    intact = out / "checkpoints" / "step_00000002.pt"
    assert "could not save the checkpoint of step 4 (RuntimeError: " in err and "unexpected pos" in err
    assert f"the checkpoints before it are intact, the newest is {intact}" in err
    command = err.split("resume with: ")[1]
    assert shlex.split(command) == ["pmf", *argv, "--resume", "auto"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.json", "step_00000002.pt"]
    monkeypatch.setattr(torch, "save", save)
    assert main(shlex.split(command)[1:]) == 0  # the printed command finishes the run
    assert (out / "checkpoints" / "step_00000004.pt").is_file()


def test_a_file_size_limit_gives_a_message_not_a_traceback(tmp_path):
    out = tmp_path / "run"
    argv = shlex.join([sys.executable, "-m", "pmf.cli", *tiny(out, "--steps", "2", "--ckpt-every", "2")])
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    # 1000 blocks of 1 KiB: less than one checkpoint of pMF-Tiny/4 with its optimiser and EMAs
    proc = subprocess.run(["bash", "-c", f"ulimit -f 1000 && exec {argv}"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.startswith("pmf train: error: could not save the checkpoint of step 2 (")
    assert last.endswith("no earlier checkpoint exists")  # nothing to resume from, so no resume command
    assert not [p for p in (out / "checkpoints").iterdir()]  # no temporary file left


def test_an_image_size_off_the_patch_grid_says_how_a_built_in_set_is_resized(tmp_path, capsys):
    """A built-in set is resized to --image-size (pmf.data.builtin.RESIZE_RULE), not center-cropped as a folder
    is: the refusal says which."""
    from pmf.data.builtin import RESIZE_RULE

    assert main(["train", "--data", "mnist-5k", "--image-size", "30", "--steps", "1", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    line = one_line_error(capsys)
    assert "--image-size 30 is not a multiple of the patch size 7 of pMF-MNIST/7" in line
    assert f"(mnist-5k is brought to it by {RESIZE_RULE})" in line and "center-cropped" not in line
    assert not (tmp_path / "r").exists()
