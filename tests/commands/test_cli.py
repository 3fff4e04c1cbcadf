"""The ``pmf`` command line: one-line errors for user mistakes, refusals of outputs that would be wrong, and
the settings the commands report (no training here; see test_cli_train.py)."""

import json
import sys

import pytest
import torch

from helpers import random_model
from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

ARCH = "pMF-Tiny/4"


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory):
    """Our checkpoint format with a recipe sampling setting and two EMAs."""
    model = random_model()
    path = tmp_path_factory.mktemp("ckpt") / "step.pt"
    state = model.state_dict()
    emas = {"d0.9": random_model(1).state_dict(), "d0.99": state}
    train_config = {"arch": ARCH, "sample": {"omega": 2.0, "t_min": 0.2, "t_max": 0.7}}
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": state, "ema": emas,
                "train_config": train_config}, path)
    return path


def test_export_refuses_unknown_suffixes(tmp_path, train_ckpt, capsys):
    out = tmp_path / "x.ckpt"  # (.onnx is a format now: tests/export/test_onnx.py)
    assert main(["export", str(train_ckpt), str(out)]) == 2
    err = capsys.readouterr().err
    assert "'.ckpt'" in err and ".safetensors" in err and ".onnx" in err and ".pt" in err and not out.exists()
    assert main(["export", str(train_ckpt), str(tmp_path / "x.pt"), "--format", "safetensors"]) == 2
    assert main(["export", str(train_ckpt), str(tmp_path / "x.pt")]) == 0 and (tmp_path / "x.pt").is_file()


def test_plot_refuses_unknown_keys(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0, "loss_u": 1 / s}) + "\n"
                                               for s in range(1, 4)))
    out = tmp_path / "l.png"
    assert main(["plot", str(run), "--keys", "loss_x", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'loss_x'" in err and "loss, loss_u" in err and not out.exists()


def _sample(tmp_path, *extra, out=None):
    return main(["sample", "--checkpoint", "random", "--arch", ARCH, "--per-class", "1", "--no-png",
                 "--out", str(out or tmp_path / "s"), *extra])


def test_user_mistakes_are_one_line_errors(tmp_path, capsys, monkeypatch, train_ckpt):
    assert _sample(tmp_path, "--classes", "9-0") == 2
    assert "--classes range '9-0' is empty" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _sample(tmp_path, out=afile) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(train_ckpt), "--offline", "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["train", "--recipe", "tiny", "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["sample", "--checkpoint", "random", "--arch", ARCH, "--out", str(tmp_path / "c")],
                 ["eval", "--checkpoint", str(train_ckpt), "--offline", "--out", str(tmp_path / "e")],
                 ["train", "--recipe", "tiny", "--out", str(tmp_path / "t")],
                 ["export-generator", "--checkpoint", "random", "--arch", ARCH, "--out", str(tmp_path / "g.pt2")]):
        assert main([*argv, "--device", "cuda"]) == 2, argv
        err = capsys.readouterr().err
        assert "no CUDA GPU is visible" in err and len(err.strip().splitlines()) == 1, err
    assert main(["sample", "--checkpoint", "random", "--arch", ARCH, "--out", str(tmp_path / "c"),
                 "--device", "gpu0"]) == 2
    assert "not a device name" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--omega", "0"], "--omega must be > 0"),
    (["--t-min", "0.8", "--t-max", "0.2"], "--interval T_MIN:T_MAX needs 0 <= T_MIN <= T_MAX <= 1"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),  # the options' range rule (pmf.commands._options)
])
def test_sampling_flags_are_checked_before_any_work(tmp_path, capsys, train_ckpt, flags, message):
    assert _sample(tmp_path, *flags) == 2
    err = capsys.readouterr().err
    assert message in err and "sampling" not in err and "%" not in err  # no progress bar started
    assert not (tmp_path / "s").exists()
    eval_flags = [f.replace("--t-min", "--interval") for f in flags if f != "--t-max"]
    if eval_flags[0] == "--interval":
        eval_flags = ["--interval", "0.8:0.2"]
    assert main(["eval", "--checkpoint", str(train_ckpt), "--offline", "--out", str(tmp_path / "e"),
                 "--num-images", "20", *eval_flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "%" not in err
    assert not (tmp_path / "e").exists()


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


def test_sample_uses_the_released_setting_of_a_released_preset(tmp_path, capsys, fixtures_dir, monkeypatch):
    import pmf.released_models as R

    monkeypatch.setitem(R.RELEASED, ARCH, R.RELEASED["pMF-B/32"])  # omega 6.5 on [0.1, 0.7]
    assert main(["sample", "--checkpoint", str(fixtures_dir / "net_tiny.pt"), "--classes", "0", "--per-class", "1",
                 "--no-png", "--out", str(tmp_path / "r")]) == 0
    assert f"sampling: omega 6.5, interval [0.1, 0.7], 1 step(s) (the released setting of {ARCH})" \
        in capsys.readouterr().out


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


def test_toy_checks_matplotlib_first_and_writes_results_before_the_figure(tmp_path, capsys, monkeypatch):
    import pmf.commands.toy as toy
    from pmf.errors import PMFError

    calls = []

    def fake_run_toy(cfg, progress, **kw):
        calls.append(cfg)
        rows = [{"dim": d, "prediction": p, "distance": 1.0, "distance_full": 1.0, "off_manifold": 0.0,
                 "final_loss": 0.5} for d in cfg.dims_list for p in cfg.predictions]
        return rows, {}

    monkeypatch.setattr(toy, "run_toy", fake_run_toy)
    monkeypatch.setattr(toy, "reference_floor", lambda cfg: 0.01)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)  # not installed
        assert main(["toy", "--quick", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
        assert "needs matplotlib" in capsys.readouterr().err and not calls
        assert main(["toy", "--quick", "--out", str(tmp_path / "b"), "--no-progress", "--no-plot"]) == 0
        assert (tmp_path / "b" / "metrics.json").is_file() and len(calls) == 1

    def broken_figure(*a, **kw):
        raise PMFError("figure failed")

    monkeypatch.setattr(toy, "plot_grid", broken_figure)
    assert main(["toy", "--quick", "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert (tmp_path / "c" / "metrics.json").is_file()


def test_export_generator_help_says_the_output_is_not_clipped(capsys):
    with pytest.raises(SystemExit):
        main(["export-generator", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "NOT clipped" in text and "pmf.sampling.to_uint8" in text


def test_sample_num_images_takes_the_classes_in_turn(tmp_path, capsys):
    import numpy as np

    out = tmp_path / "n"
    assert main(["sample", "--checkpoint", "random", "--arch", ARCH, "--num-images", "5", "--classes", "4,1,2",
                 "--no-png", "--no-progress", "--out", str(out)]) == 0
    assert np.load(out / "samples.npz")["labels"].tolist() == [4, 4, 1, 1, 2]
    # the same images as --per-class gives them: image i depends on (seed, i) and its label only
    assert _sample(tmp_path, "--classes", "4,1,2", "--per-class", "2", out=tmp_path / "p") == 0
    a, b = np.load(out / "samples.npz"), np.load(tmp_path / "p" / "samples.npz")
    assert np.array_equal(a["images"][:2], b["images"][:2])
    capsys.readouterr()
    assert _sample(tmp_path, "--num-images", "3") == 2
    assert "give --per-class or --num-images, not both" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", "random", "--arch", ARCH, "--num-images", "0", "--out", str(out)]) == 2
    assert "--num-images must be >= 1" in capsys.readouterr().err


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
    assert json.loads((tmp_path / "mnist" / "metrics.json").read_text())["dataset"] == "mnist-5k"
    # trained on digits (8x8 brought to 32x32): the digits judge cannot read it, and mnist-5k is another data set
    digits = ckpt("digits", "pMF-Tiny/4", "digits")
    capsys.readouterr()
    assert main(digits) == 2
    assert "digits cannot judge this model" in capsys.readouterr().err
    assert main([*digits, "--dataset", "mnist-5k"]) == 2
    assert "trained on digits; the offline score of mnist-5k" in capsys.readouterr().err
    assert len(fake_offline) == 1


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


def test_export_to_a_folder_that_cannot_be_made_is_one_line(tmp_path, capsys, train_ckpt):
    assert main(["export", "--checkpoint", str(train_ckpt), "--out", "/proc/x/a.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot create the output folder '/proc/x'" in err
    assert len(err.strip().splitlines()) == 1


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


def test_old_num_samples_spelling_works_for_sample_eval_and_demo(tmp_path, capsys, train_ckpt):
    import numpy as np

    from pmf.cli import build_parser

    argv = ["sample", "--checkpoint", str(train_ckpt), "--out", str(tmp_path), "--no-progress", "--no-png"]
    assert main([*argv, "--num-samples", "3"]) == 0
    assert "--num-samples is deprecated; use --num-images" in capsys.readouterr().err
    assert len(np.load(tmp_path / "samples.npz")["images"]) == 3
    for command in (["eval", "--checkpoint", "x"], ["demo"]):
        assert build_parser().parse_args([*command, "--num-samples", "12"]).num_images == 12


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
