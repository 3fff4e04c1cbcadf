"""``pmf train`` end to end through the command line on the seconds-long ``tiny`` recipe: a run folder that
holds a run is not restarted silently, Ctrl-C names the command that resumes, the data decide the classes."""

import json
from pathlib import Path

import pytest

from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def tiny(out, *extra):
    return ["train", "--recipe", "tiny", "--out", str(out), "--sample-every", "0", *extra]


def test_a_run_folder_with_checkpoints_is_not_restarted_silently(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny(out, "--steps", "2", "--ckpt-every", "2")) == 0
    metrics = (out / "metrics.jsonl").read_text()
    assert metrics and (out / "checkpoints" / "step_00000002.pt").is_file()
    capsys.readouterr()
    assert main(tiny(out, "--steps", "4", "--ckpt-every", "2")) == 2
    err = capsys.readouterr().err
    assert "--resume auto" in err and "--overwrite" in err and "step 2" in err and len(err.splitlines()) == 1
    assert (out / "metrics.jsonl").read_text() == metrics  # untouched
    assert main(tiny(out, "--steps", "4", "--ckpt-every", "2", "--resume", "auto")) == 0
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()][-1] == 4
    assert main(tiny(out, "--steps", "2", "--ckpt-every", "2", "--overwrite")) == 0
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2 and not (out / "checkpoints" / "step_00000004.pt").exists()
