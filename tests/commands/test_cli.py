"""The ``pmf`` command line: one-line errors for user mistakes, refusals of outputs that would be wrong, and
the settings the commands report (no training here; see test_cli_train.py; pmf sample's outputs:
test_cli_sample.py; pmf eval's: test_cli_eval.py)."""

import json
import sys

import pytest
import torch

from helpers import ARCH
from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_sample_uses_the_released_setting_of_a_released_preset(tmp_path, capsys, fixtures_dir, monkeypatch):
    import pmf.released_models as R

    monkeypatch.setitem(R.RELEASED, ARCH, R.RELEASED["pMF-B/32"])  # omega 6.5 on [0.1, 0.7]
    assert main(["sample", "--checkpoint", str(fixtures_dir / "net_tiny.pt"), "--classes", "0", "--per-class", "1",
                 "--no-png", "--out", str(tmp_path / "r")]) == 0
    assert f"sampling: omega 6.5, interval [0.1, 0.7], 1 step(s) (the released setting of {ARCH})" \
        in capsys.readouterr().out


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


def test_export_to_a_folder_that_cannot_be_made_is_one_line(tmp_path, capsys, train_ckpt):
    assert main(["export", "--checkpoint", str(train_ckpt), "--out", "/proc/x/a.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot create the output folder '/proc/x'" in err
    assert len(err.strip().splitlines()) == 1


def test_old_num_samples_spelling_works_for_sample_eval_and_demo(tmp_path, capsys, train_ckpt):
    import numpy as np

    from pmf.cli import build_parser

    argv = ["sample", "--checkpoint", str(train_ckpt), "--out", str(tmp_path), "--no-progress", "--no-png"]
    assert main([*argv, "--num-samples", "3"]) == 0
    assert "--num-samples is deprecated; use --num-images" in capsys.readouterr().err
    assert len(np.load(tmp_path / "samples.npz")["images"]) == 3
    for command in (["eval", "--checkpoint", "x"], ["demo"]):
        assert build_parser().parse_args([*command, "--num-samples", "12"]).num_images == 12
