"""``pmf train --init`` through the command line: gray folders, release-format files, another image size,
class names that travel to ``pmf sample``, and the refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pmf.checkpoints.load import latest_checkpoint, load_checkpoint
from pmf.cli import main
from pmf.data.class_names import class_names
from pmf.model_configs import model_config
from pmf.nn.model import PMFDiT, u_head_only
from pmf.nn.release import release_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--steps", "2", "--batch-size", "4", "--sample-every", "0", "--no-progress", "--workers", "0"]


def gray_folder(root: Path, size: int, names=("cat", "dog"), per_class: int = 4, mode: str = "L") -> Path:
    gen = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = gen.integers(0, 256, (size, size) if mode == "L" else (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels, mode=mode).save(root / name / f"{i}.png")
    return root


def trained_config(run: Path) -> dict:
    return torch.load(latest_checkpoint(run / "checkpoints"), weights_only=True)["model_config"]


def test_a_gray_folder_trains_a_one_channel_model_that_records_its_class_names(tmp_path):
    data = gray_folder(tmp_path / "gray", 28)
    assert main(["train", "--recipe", "mnist", "--arch", "pMF-Tiny/4", "--data", str(data), "--out",
                 str(tmp_path / "run"), *FAST]) == 0
    assert trained_config(tmp_path / "run")["in_channels"] == 1
    assert load_checkpoint(str(tmp_path / "run" / "checkpoints" / "step_00000002.pt")).class_names == ["cat", "dog"]


def test_init_at_42_px_from_a_28_px_model_trains_and_samples_by_class_name(tmp_path, capsys):
    data28 = gray_folder(tmp_path / "d28", 28)
    assert main(["train", "--recipe", "mnist", "--data", str(data28), "--out", str(tmp_path / "a"), *FAST]) == 0
    data42 = gray_folder(tmp_path / "d42", 42, names=("owl", "cat"))
    assert main(["train", "--recipe", "mnist", "--data", str(data42), "--init", str(tmp_path / "a"), "--ema",
                 "nope", "--out", str(tmp_path / "b"), *FAST]) == 2
    assert "--ema 'nope' is not in the checkpoint; give one of: raw, " in capsys.readouterr().err
    capsys.readouterr()
    assert main(["train", "--recipe", "mnist", "--data", str(data42), "--init", str(tmp_path / "a"), "--image-size",
                 "42", "--out", str(tmp_path / "b"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "position embedding resampled (4x4 -> 6x6 patches)" in err and "1 rows kept by matching names" in err
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["init"] == str(tmp_path / "a") and cfg["init_ema"] == "d0.99"
    assert trained_config(tmp_path / "b")["input_size"] == 42
    # the run continues from its config (which names the init) with its own weights, not the init's
    assert main(["train", "--config", str(tmp_path / "b" / "config.json"), "--resume", "auto", "--steps", "3",
                 "--no-progress"]) == 0
    assert "steps 2 -> 3" in capsys.readouterr().err and latest_checkpoint(tmp_path / "b" / "checkpoints").stem \
        == "step_00000003"
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(tmp_path / "b"), "--classes", "cat,owl", "--per-class", "1", "--out",
                 str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("*.png") if p.name != "grid.png") == ["000000_cat.png", "000001_owl.png"]
    assert np.load(out / "samples.npz")["images"].shape == (2, 42, 42, 1)
    assert main(["export", "--checkpoint", str(tmp_path / "b"), "--out", str(tmp_path / "b.safetensors")]) == 0
    assert load_checkpoint(str(tmp_path / "b.safetensors")).class_names == ["cat", "owl"]
    assert class_names(2, data=str(data42), recorded=["cat", "owl"]) == ["cat", "owl"]  # pmf serve's picker


def test_release_format_files_without_and_with_v_head_train_with_init(tmp_path, fixtures_dir, capsys):
    torch.manual_seed(0)
    release = tmp_path / "tiny_release.pt"
    torch.save(release_state_dict(u_head_only(PMFDiT(model_config("pMF-Tiny/4"))), prefix="net."), release)
    data = gray_folder(tmp_path / "rgb", 32, names=("a", "b", "c"), mode="RGB")
    for i, init in enumerate((release, fixtures_dir / "net_tiny.pt")):
        capsys.readouterr()
        assert main(["train", "--recipe", "tiny", "--data", str(data), "--init", str(init), "--out",
                     str(tmp_path / f"r{i}"), *FAST]) == 0
        err = capsys.readouterr().err
        assert "class table 10 -> 3 classes" in err
        assert ("v-head missing: copied from the u-head" in err) == (i == 0)
    data16 = gray_folder(tmp_path / "g16", 16)  # RGB 32 px -> gray 16 px
    assert main(["train", "--recipe", "tiny", "--data", str(data16), "--init", str(fixtures_dir / "net_tiny.pt"),
                 "--out", str(tmp_path / "g"), *FAST]) == 0
    cfg = trained_config(tmp_path / "g")
    assert (cfg["in_channels"], cfg["input_size"]) == (1, 16)


def test_init_refusals_are_one_line(tmp_path, fixtures_dir, capsys):
    data = gray_folder(tmp_path / "d", 32, mode="RGB")
    base = ["train", "--recipe", "tiny", "--data", str(data), "--out", str(tmp_path / "r"), *FAST]
    cases = [(["--init", str(tmp_path / "missing.pt")], "not found"),
             (["--init", str(fixtures_dir / "net_tiny.pt"), "--arch", "pMF-MNIST/7"], "patch_size 4 vs 7")]
    for extra, message in cases:
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]


@pytest.mark.slow
def test_a_b16_release_file_at_64_px_trains_two_steps(tmp_path):
    torch.manual_seed(0)
    release = tmp_path / "b16.pt"
    model = u_head_only(PMFDiT(model_config("pMF-B/16", input_size=64)))
    torch.save(release_state_dict(model, prefix="net."), release)
    del model
    data = gray_folder(tmp_path / "d", 64, mode="RGB")
    assert main(["train", "--recipe", "pMF-B/16", "--data", str(data), "--init", str(release), "--out",
                 str(tmp_path / "r"), "--precision", "fp32", "--no-perceptual", "--device", "cpu", *FAST]) == 0
    assert trained_config(tmp_path / "r")["input_size"] == 64
