"""``pmf eval`` on the command line: the checkpoint's sampling setting by default, sweeps (with and without
matplotlib), and the offline score's data set: the one the checkpoint was trained on, refused when it cannot judge
the model."""

import json
import sys

import pytest
import torch

from helpers import random_model
from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_defaults_to_the_checkpoints_setting_and_sweeps(tmp_path, capsys, train_ckpt, fake_offline):
    base = ["eval", "--checkpoint", str(train_ckpt), "--offline", "--num-images", "10", "--no-progress",
            "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert "sampling: omega 2, interval [0.2, 0.7], 1 step(s), EMA d0.9" in capsys.readouterr().out
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert (m["settings"]["omega"], m["settings"]["t_min"], m["settings"]["t_max"], m["ema"]) == (2.0, 0.2, 0.7,
                                                                                                "d0.9")
    assert main([*base, "--out", str(tmp_path / "b"), "--omega", "1,3", "--emas", "d0.9,d0.99"]) == 0
    rows = json.loads((tmp_path / "b" / "sweep.json").read_text())["rows"]
    assert [(r["ema"], r["omega"], r["t_min"], r["t_max"]) for r in rows] == [
        ("d0.9", 1.0, 0.2, 0.7), ("d0.9", 3.0, 0.2, 0.7), ("d0.99", 1.0, 0.2, 0.7), ("d0.99", 3.0, 0.2, 0.7)]
    assert (tmp_path / "b" / "sweep.png").is_file()


def test_an_eval_sweep_without_matplotlib_keeps_its_results(tmp_path, capsys, train_ckpt, fake_offline,
                                                             monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed: only the figure is missing
    assert main(["eval", "--checkpoint", str(train_ckpt), "--offline", "--num-images", "10", "--no-progress",
                 "--device", "cpu", "--omega", "1,3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sweep.png not written: the sweep's plot needs matplotlib: pip install 'pixel-meanflow[plot]'" in out
    assert len(json.loads((tmp_path / "sweep.json").read_text())["rows"]) == 2
    assert (tmp_path / "sweep.md").is_file() and not (tmp_path / "sweep.png").exists()


def test_eval_refuses_an_offline_dataset_that_does_not_fit(tmp_path, capsys, fake_offline):
    # an MNIST-sized model (28x28, one channel, 10 classes) judged by the 8x8 digits classifier
    argv = ["eval", "--checkpoint", "random", "--arch", "pMF-MNIST/7", "--offline", "--num-images", "10",
            "--no-progress", "--device", "cpu", "--out", str(tmp_path / "e")]
    assert main([*argv, "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert "digits cannot judge this model" in err and "8x8" in err and "28x28" in err
    assert not fake_offline and not (tmp_path / "e" / "metrics.json").exists()
    assert main([*argv, "--dataset", "mnist-5k"]) == 0 and len(fake_offline) == 1


def test_eval_offline_takes_the_dataset_the_checkpoint_was_trained_on(tmp_path, capsys, fake_offline):
    def ckpt(name, arch, data):
        model = random_model(arch=arch)
        path = tmp_path / f"{name}.pt"
        torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict(),
                    "ema": {}, "train_config": {"arch": arch, "data": data}}, path)
        return ["eval", "--checkpoint", str(path), "--offline", "--num-images", "10", "--no-progress", "--device",
                "cpu", "--out", str(tmp_path / name)]

    # trained on mnist-5k: judged by the mnist-5k classifier without --dataset
    assert main(ckpt("mnist", "pMF-MNIST/7", "mnist-5k")) == 0
    m = json.loads((tmp_path / "mnist" / "metrics.json").read_text())
    # the record names what was evaluated, not the flags left out (no --arch, no --noise-scale)
    assert (m["dataset"], m["arch"], m["settings"]["noise_scale"]) == ("mnist-5k", "pMF-MNIST/7", 1.0)
    # trained on digits brought to 32x32 (4 x 8): the digits judge reads it pooled 4x4; mnist-5k is another set
    digits = ckpt("digits", "pMF-Tiny/4", "digits")
    assert main(digits) == 0
    assert json.loads((tmp_path / "digits" / "metrics.json").read_text())["dataset"] == "digits"
    capsys.readouterr()
    assert main([*digits, "--dataset", "mnist-5k"]) == 2
    assert "trained on digits; the offline score of mnist-5k" in capsys.readouterr().err
    assert [im.shape[1:] for im in fake_offline] == [(28, 28, 1), (32, 32, 3)]


@pytest.mark.parametrize("size, patch, judged", [(56, 14, True), (40, 10, False)])
def test_eval_offline_reads_an_upsampled_model_as_the_score_does(tmp_path, capsys, fake_offline, size, patch,
                                                                 judged):
    """A model trained on MNIST brought to 56 px (pmf train --image-size 56, docs/claims.md) is judged pooled 2x2
    (it was refused); 40 px, neither a padded copy nor a multiple, is refused in one line that says what is read."""
    model = random_model(arch="pMF-MNIST/7", input_size=size, patch_size=patch)
    path = tmp_path / "m.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict(),
                "ema": {}, "train_config": {"arch": "pMF-MNIST/7", "data": "mnist-5k"}}, path)
    rc = main(["eval", "--checkpoint", str(path), "--offline", "--num-images", "10", "--no-progress", "--device",
               "cpu", "--out", str(tmp_path / "e")])
    if judged:
        assert rc == 0 and [im.shape[1:] for im in fake_offline] == [(size, size, 1)]
    else:
        err = capsys.readouterr().err
        assert rc == 2 and not fake_offline
        assert "reads 28x28 images at that size, up to a quarter larger (centre-cropped) or a whole multiple" in err
        assert "the model's are 40x40" in err
