"""What a new user met silently: an eval that asked for FID without the Inception weights, a release-format
export without its class names, a hub folder whose weights were private to the owner."""

import json
import os
import stat

import pytest
import torch

from pmf.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def named_checkpoint(tmp_path, names=("cat", "dog")):
    from helpers import random_model

    model = random_model(seed=3, num_classes=len(names))
    path = tmp_path / "named.pt"
    sd = model.state_dict()
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd, "ema": {"d0.9": sd},
                "train_config": {"arch": "pMF-Tiny/4"}, "class_names": list(names)}, path)
    return path


def test_eval_without_inception_weights_names_the_file_unless_offline_was_asked(tmp_path, monkeypatch, capsys):
    from pmf.evaluation.inception import WEIGHTS_FILE

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("PMF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PMF_INCEPTION_WEIGHTS", raising=False)
    rc = main(["eval", "--checkpoint", "random", "--arch", "pMF-MNIST/7", "--num-images", "10", "--out",
               str(tmp_path / "e"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and WEIGHTS_FILE in err and "--offline" in err
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_a_release_format_export_carries_its_class_names(tmp_path, capsys):
    from pmf.checkpoints.load import load_checkpoint

    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(named_checkpoint(tmp_path)), "--out", str(out)]) == 0
    assert "its sampling setting and class names" in capsys.readouterr().out
    assert json.loads((tmp_path / "model.sampling.json").read_text())["class_names"] == ["cat", "dog"]
    assert load_checkpoint(out).class_names == ["cat", "dog"]
    samples = tmp_path / "s"
    assert main(["sample", "--checkpoint", str(out), "--classes", "dog", "--per-class", "1", "--out", str(samples),
                 "--no-progress"]) == 0
    assert [p.name for p in samples.glob("0*.png")] == ["000000_dog.png"]


def test_every_file_of_a_hub_export_has_one_mode(tmp_path):
    pytest.importorskip("safetensors")
    out = tmp_path / "hub"
    before = os.umask(0o022)
    try:
        assert main(["export", "--checkpoint", str(named_checkpoint(tmp_path)), "--format", "hub", "--out",
                     str(out)]) == 0
    finally:
        os.umask(before)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def test_an_init_architecture_that_replaces_the_recipes_is_said(tmp_path, fixtures_dir, capsys):
    net = fixtures_dir / "net_tiny.pt"
    assert main(["train", "--recipe", "mnist", "--data", "digits", "--init", str(net), "--out", str(tmp_path / "r"),
                 "--steps", "1", "--batch-size", "4", "--sample-every", "0", "--no-progress", "--workers", "0"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "replaces the recipe's" in ln]
    assert lines == [f"--init {net} is a pMF-Tiny/4: its architecture replaces the recipe's pMF-MNIST/7; the "
                     "recipe's other settings stay (batch 4, lr 0.01, --steps 1)"]


def test_a_negative_seed_is_refused_by_pmf_sample_as_by_the_server(tmp_path, capsys):
    from pmf.seeds import seed_problem

    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", "random", "--arch", "pMF-Tiny/4", "--seed", "-1", "--out", str(tmp_path)])
    assert seed_problem(-1) in capsys.readouterr().err
    assert seed_problem(2**63) and seed_problem(0) is None


def test_the_offline_scores_refusal_names_only_datasets_it_takes():
    from pmf.commands.eval import check_offline_dataset
    from pmf.errors import PMFError
    from pmf.model_configs import model_config

    with pytest.raises(PMFError) as err:
        check_offline_dataset(model_config("pMF-Tiny/4", num_classes=3, input_size=16), "mnist-5k")
    assert "Score a model of a built-in set (mnist-5k, digits) trained at a size it reads (pmf train --image-size), " \
        "or any model with FID (--ref)" in str(err.value)
