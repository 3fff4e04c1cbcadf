"""``pmf sample``'s outputs: the checkpoint's sampling setting by default, the newest checkpoint of a run folder,
and a used output folder left with exactly the new images."""

import json

import pytest

from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(folder):
    import numpy as np

    return np.load(folder / "samples.npz")["images"]


def test_sample_defaults_to_the_checkpoints_setting(tmp_path, capsys, train_ckpt):
    import numpy as np

    ck = ["--checkpoint", str(train_ckpt), "--classes", "1,2", "--per-class", "1", "--no-png", "--device", "cpu"]
    assert main(["sample", *ck, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "sampling: omega 2, interval [0.2, 0.7], 1 step(s), EMA d0.9 (the training recipe's sampling setting)" \
        in out
    assert main(["sample", *ck, "--out", str(tmp_path / "b"), "--omega", "2", "--t-min", "0.2", "--t-max", "0.7",
                 "--ema", "d0.9"]) == 0
    assert np.array_equal(_images(tmp_path / "a"), _images(tmp_path / "b"))
    capsys.readouterr()
    assert main(["sample", *ck, "--out", str(tmp_path / "c"), "--omega", "3", "--ema", "d0.99"]) == 0
    out = capsys.readouterr().out
    assert "sampling: omega 3, interval [0.2, 0.7], 1 step(s), EMA d0.99" in out and "omega, EMA from the flags" in out
    assert main(["sample", *ck, "--out", str(tmp_path / "d"), "--omega", "3", "--t-min", "0.2", "--t-max", "0.7",
                 "--ema", "d0.99"]) == 0
    assert np.array_equal(_images(tmp_path / "c"), _images(tmp_path / "d"))
    assert not np.array_equal(_images(tmp_path / "a"), _images(tmp_path / "c"))
    settings = json.loads((tmp_path / "c" / "sample_settings.json").read_text())
    assert (settings["omega"], settings["t_min"], settings["t_max"], settings["ema"]) == (3.0, 0.2, 0.7, "d0.99")


def test_sample_takes_a_run_folder_and_uses_its_newest_checkpoint(tmp_path, capsys, train_ckpt):
    import shutil

    import numpy as np

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(train_ckpt, run / "checkpoints" / "step_00000002.pt")
    shutil.copy(train_ckpt, run / "checkpoints" / "step_00000010.pt")
    (run / "checkpoints" / "step_00000012.pt").write_bytes(b"truncated")  # an unreadable newer file is skipped
    argv = ["sample", "--classes", "1", "--per-class", "2", "--no-png", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--checkpoint", str(run), "--out", str(tmp_path / "a")]) == 0
    assert f"checkpoint: {run / 'checkpoints' / 'step_00000010.pt'} (the newest in {run})" in capsys.readouterr().out
    assert main([*argv, "--checkpoint", str(run / "checkpoints" / "step_00000010.pt"), "--out",
                 str(tmp_path / "b")]) == 0
    assert np.array_equal(np.load(tmp_path / "a" / "samples.npz")["images"],
                          np.load(tmp_path / "b" / "samples.npz")["images"])
    assert main([*argv, "--checkpoint", str(tmp_path / "a"), "--out", str(tmp_path / "c")]) == 2
    assert "no training checkpoint found in the folder" in capsys.readouterr().err


def test_sampling_into_a_used_folder_leaves_no_stale_pngs(tmp_path, capsys, train_ckpt):
    import numpy as np

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # not a file pmf sample writes: it stays
    argv = ["sample", "--checkpoint", str(train_ckpt), "--out", str(out), "--no-progress", "--classes", "1"]
    assert main([*argv, "--per-class", "3"]) == 0
    assert len(list(out.glob("*_class*.png"))) == 3
    assert main([*argv, "--per-class", "1"]) == 0
    assert "removed 3 sample PNGs of an earlier run" in capsys.readouterr().out
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["000000_class1.png", "grid.png"] and (out / "notes.txt").read_text() == "mine"
    assert len(np.load(out / "samples.npz")["images"]) == 1
    assert main([*argv, "--per-class", "2", "--no-png"]) == 0  # --no-png: none of the old PNGs may stay either
    assert sorted(p.name for p in out.glob("*.png")) == ["grid.png"]


def test_sampling_into_a_used_folder_of_a_class_named_model_leaves_only_the_new_images(tmp_path, capsys):
    import numpy as np
    import torch

    from helpers import random_model

    model = random_model(seed=1)
    sd = model.state_dict()
    ckpt = tmp_path / "named.pt"
    names = ["seven", "x y", "été"] + [f"digit {i}" for i in range(3, 10)]
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd, "ema": {"d0.9": sd},
                "train_config": {"arch": "pMF-Tiny/4"}, "class_names": names}, ckpt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["sample", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", "--classes", "0,1,2"]
    assert main([*argv, "--per-class", "3"]) == 0
    assert sorted(p.name for p in out.glob("0*.png"))[:2] == ["000000_seven.png", "000001_seven.png"]
    assert len(list(out.glob("0*.png"))) == 9
    capsys.readouterr()
    assert main([*argv[:-1], "1", "--per-class", "1"]) == 0
    assert "removed 9 sample PNGs of an earlier run" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["000000_x_y.png", "grid.png", "notes.txt", "sample_settings.json",
                                                     "samples.npz"]
    assert len(np.load(out / "samples.npz")["images"]) == 1
