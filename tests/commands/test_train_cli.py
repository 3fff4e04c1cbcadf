"""``pmf train`` flag handling, ``pmf plot`` and CLI error messages (no training here)."""

import json

import pytest

from pmf.cli import build_parser, main


def parse(*argv):
    return build_parser().parse_args(["train", *argv])


def test_train_flags_override_the_recipe():
    from pmf.commands.train import config_from_args
    from pmf.perceptual import PerceptualConfig

    cfg = config_from_args(parse("--recipe", "pMF-B/16", "--steps", "7", "--batch-size", "256", "--lr", "2e-3",
                                 "--ema-halflives", "1000", "--no-perceptual", "--schedule", "cosine"))
    assert (cfg.arch, cfg.steps, cfg.batch_size, cfg.optim.lr, cfg.optim.schedule) == ("pMF-B/16", 7, 256, 2e-3,
                                                                                        "cosine")
    assert cfg.ema.halflives_kimg == [1000.0] and cfg.perceptual is None
    cfg = config_from_args(parse("--recipe", "mnist", "--lpips", "--perceptual-max-t", "0.6"))
    assert cfg.perceptual == PerceptualConfig(lpips=True, convnext=False, lpips_lambda=0.4, convnext_lambda=0.1,
                                              max_t=0.6)


def test_cli_errors_are_clean(tmp_path, capsys):
    assert main(["train", "--recipe", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert main(["train", "--recipe", "tiny", "--arch", "pMF-Q/3"]) == 2
    assert "unknown architecture" in capsys.readouterr().err
    assert main(["train", "--recipe", "tiny", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 2.0, "loss_u": 1 / s, "loss_v": 2 / s} for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(run), "--out", str(tmp_path / "l.png"), "--log-y"]) == 0
    assert (tmp_path / "l.png").stat().st_size > 1000
    assert main(["plot", str(tmp_path / "missing")]) == 2
