"""``pmf train`` end to end through the command line on the seconds-long ``tiny`` recipe: a run folder that
holds a run is not restarted silently, Ctrl-C names the command that resumes, the data decide the classes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = str(Path(__file__).resolve().parents[2] / "src")


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


def test_ctrl_c_saves_and_prints_the_command_that_resumes(tmp_path, capsys):
    import shlex

    out = tmp_path / "run"
    data = image_folder(tmp_path / "data", 2, 32, per_class=4)  # decoded by data-loading processes
    argv = tiny(out, "--data", str(data), "--batch-size", "4", "--steps", "100000", "--ckpt-every", "2",
                "--log-every", "1", "--workers", "2")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pmf.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "step_00000002.pt").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to the data-loading processes too
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.count("Ctrl-C: stopping after this step") == 1
    line = next(ln for ln in stderr.splitlines() if ln.startswith("pmf train: interrupted"))
    step = int(line.split("at step ")[1].split(";")[0])
    assert step >= 2 and str(out / "checkpoints" / f"step_{step:08d}.pt") in line  # saved at the interrupt
    command = next(ln for ln in stderr.splitlines() if ln.startswith("resume with: ")).removeprefix("resume with: ")
    words = shlex.split(command)
    assert words == ["pmf", *argv, "--resume", "auto"]
    capsys.readouterr()
    assert main([*words[1:], "--steps", str(step + 1)]) == 0  # the printed command, one step further
    assert f"resumed from {out / 'checkpoints' / f'step_{step:08d}.pt'} at step {step}" in capsys.readouterr().out
    assert (out / "checkpoints" / f"step_{step + 1:08d}.pt").is_file()


def image_folder(root, classes: int, size: int, per_class: int = 2):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"c{c:02d}" / f"{i}.png")
    return root


def model_config_of(out):
    from pmf.checkpoints.load import list_checkpoints, read_file

    return read_file(list_checkpoints(out / "checkpoints")[-1][1])["model_config"]


@pytest.mark.parametrize("classes", [2, 12])
def test_the_model_takes_its_classes_from_an_image_folder(tmp_path, capsys, classes):
    data = image_folder(tmp_path / "data", classes, 32)
    (data / "c00" / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    argv = tiny(out, "--data", str(data), "--steps", "1", "--batch-size", "4", "--num-workers", "0")
    assert main(argv) == 0
    printed = capsys.readouterr().err
    assert f"{2 * classes} images, {classes} classes, 32x32, 3 channels; skipped 1 files that are not images" \
        in printed and f"model pMF-Tiny/4 with num_classes={classes}" in printed
    assert model_config_of(out)["num_classes"] == classes
    assert main([*argv[:argv.index("--steps")], "--steps", "2", "--batch-size", "4", "--num-workers", "0",
                 "--resume", "auto"]) == 0  # the same inference on resume: the checkpoint fits


def test_image_size_and_flags(tmp_path, capsys):
    data = image_folder(tmp_path / "data", 2, 30)
    base = tiny(tmp_path / "a", "--data", str(data), "--steps", "1", "--batch-size", "4", "--num-workers", "0")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "30x30" in err and "patch size 4" in err and "--image-size" in err
    assert main([*base, "--image-size", "28"]) == 0
    assert model_config_of(tmp_path / "a")["input_size"] == 28
    assert main(tiny(tmp_path / "b", "--data", str(data), "--steps", "1", "--batch-size", "4", "--num-workers", "0",
                     "--image-size", "16", "--num-classes", "5")) == 0
    cfg = model_config_of(tmp_path / "b")
    assert (cfg["input_size"], cfg["num_classes"]) == (16, 5)


def test_a_patch_override_is_checked_against_the_new_image_size(tmp_path, capsys):
    """Patch 12 divides --image-size 48 but not the preset's 32: the model is built at 48 with patch 12 (the claims
    study's 224 px / 56 px patch cells on the 28 px mnist recipe), and a size off that patch's grid is refused by
    naming the override."""
    def run(out, size):
        return main(tiny(out, "--steps", "1", "--batch-size", "4", "--no-progress", "--image-size", size,
                         "--model-overrides", '{"patch_size": 12}'))

    assert run(tmp_path / "a", "48") == 0
    cfg = model_config_of(tmp_path / "a")
    assert (cfg["input_size"], cfg["patch_size"]) == (48, 12)
    assert "model pMF-Tiny/4 with input_size=48" in capsys.readouterr().err
    assert run(tmp_path / "b", "40") == 2
    err = capsys.readouterr().err
    assert "--image-size 40 is not a multiple of the patch size 12 of --model-overrides" in err
    assert "Traceback" not in err and not (tmp_path / "b").exists()


def test_an_unreadable_file_is_named_once(tmp_path, capsys):
    data = image_folder(tmp_path / "data", 2, 32, per_class=3)
    broken = data / "c01" / "9.png"
    broken.write_bytes((data / "c01" / "0.png").read_bytes()[:40])  # truncated
    assert main(tiny(tmp_path / "r", "--data", str(data), "--steps", "6", "--batch-size", "4",
                     "--num-workers", "0")) == 0  # 24 draws over 7 files: the broken one is met several times
    assert capsys.readouterr().err.count(f"skipping unreadable image {broken}") == 1


def test_header_and_progress_bar_show_what_matters(tmp_path, capsys):
    assert main(tiny(tmp_path / "r", "--steps", "2", "--log-every", "1")) == 0
    captured = capsys.readouterr()
    header = next(ln for ln in captured.err.splitlines() if ln.startswith("training "))
    assert json.loads(captured.out)["steps"] == 2  # stdout stays the JSON summary
    assert "pMF-Tiny/4 (0.4" in header and "M parameters" in header and "on digits (" in header
    assert "10 classes" in header and "| cpu, fp32 | 2 steps, batch 16" in header
    assert "loss_u=" in captured.err and "loss_v=" in captured.err and "loss=" not in captured.err


def test_parallel_flags_reach_the_config():
    from pmf.cli import build_parser
    from pmf.commands.train import config_from_args

    parse = build_parser().parse_args
    cfg = config_from_args(parse(["train", "--recipe", "tiny", "--parallel", "hsdp", "--shard-size", "2",
                                  "--reduce", "native", "--async-checkpoint"]))
    assert (cfg.parallel, cfg.shard_size, cfg.reduce, cfg.async_checkpoint) == ("hsdp", 2, "native", True)
    default = config_from_args(parse(["train", "--recipe", "tiny"]))
    assert (default.parallel, default.shard_size, default.reduce) == ("ddp", None, "auto")
    with pytest.raises(SystemExit):
        parse(["train", "--reduce", "fast"])
