"""The trainer with the real perceptual module (random weights, small crops): end to end, exact resume,
and the refusal to start when the real weights are absent."""

import json

import pytest

from helpers import needs_or_skip, tiny_config
from pmf.cli import main
from pmf.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

needs_or_skip("perceptual", "timm")


@pytest.fixture
def random_perceptual(monkeypatch):
    """build_perceptual with random weights and a small ConvNeXt-V2, as the tests cannot download weights."""
    import pmf.perceptual as P

    original = P.build_perceptual
    built = []

    def build(config, device):
        config.convnext_model, config.crop_size = "convnextv2_atto", 32
        with pytest.warns(UserWarning, match="RANDOM"):
            fn = original(config, device, random_init=True)
        built.append(fn)
        return fn

    monkeypatch.setattr(P, "build_perceptual", build)
    return built


def rows(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_with_both_perceptual_terms_resumes_exactly(tmp_path, random_perceptual):
    perc = dict(lpips=True, convnext=True, max_t=0.9)
    full = tmp_path / "full"
    train(tiny_config(full, steps=4, ckpt_every=2, perceptual=perc), progress=False)
    part = tmp_path / "part"
    train(tiny_config(part, steps=2, ckpt_every=2, perceptual=perc), progress=False)
    train(tiny_config(part, steps=4, ckpt_every=2, perceptual=perc), resume="auto", progress=False)
    a, b = rows(full), rows(part)
    assert [r["step"] for r in a] == [1, 2, 3, 4] and len(random_perceptual) == 3
    assert all(r["loss_lpips"] > 0 and r["loss_convnext"] > 0 for r in a)  # the terms entered the loss
    last = {r["step"]: r for r in b}
    for r in a[2:]:  # steps after the resume: identical crops, hence identical losses
        assert r["loss"] == last[r["step"]]["loss"] and r["loss_lpips"] == last[r["step"]]["loss_lpips"]


def test_demo_refuses_to_start_without_perceptual_weights(tmp_path, monkeypatch, capsys):
    for var in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "empty-cache"))
    for var in ("PMF_LPIPS_VGG_WEIGHTS", "PMF_CONVNEXT_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--steps", "2", "--lpips", "--convnext", "--no-download",
               "--no-score"])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing to train with random features" in err
    assert err.count("vgg16-397923af.pth") >= 1 and "convnextv2_base" in err
    assert "train without the term: --no-lpips and --no-convnext" in err
    assert not list((tmp_path / "demo").rglob("*.pt"))  # no training step was taken
