"""pmf.evaluation.sweep: every row of a sweep is the evaluation of its setting (its EMA's weights included), the
best row is chosen, and --fast evaluates the chosen setting again with the full count."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from helpers import random_model
from pmf.evaluation.evaluate import EvalSettings, evaluate, grid
from pmf.evaluation.sweep import Scoring, Sweep
from pmf.sampler_loading import SamplerOptions, load_sampler

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"depth": 2, "aux_head_depth": 1, "input_size": 16}


@pytest.fixture
def mean_score(monkeypatch):
    """The offline score replaced by a number of the images themselves (their mean), so rows differ."""
    import pmf.evaluation.offline_score

    def offline_scores(images, labels, *, dataset="mnist-5k", **kw):
        return {"frechet": float(images.astype(np.float64).mean()), "accuracy": float(images.std()), "dataset": dataset}

    monkeypatch.setattr(pmf.evaluation.offline_score, "offline_scores", offline_scores)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model, other = (random_model(seed=s, **SMALL) for s in (1, 2))
    path = tmp_path_factory.mktemp("sweep") / "ck.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict(),
                "ema": {"d0.9": model.state_dict(), "d0.99": other.state_dict()},
                "train_config": {"sample": {"omega": 2.0, "t_min": 0.2, "t_max": 0.7}}}, path)
    return path


def _direct(ckpt, base, row, n):
    """What the sweep must give for one row: ``evaluate`` of that row's setting with its EMA's weights."""
    sampler = load_sampler(ckpt, SamplerOptions(ema=row["ema"], device="cpu"))
    setting = dataclasses.replace(base, omega=row["omega"], t_min=row["t_min"], t_max=row["t_max"], ema=row["ema"])
    return evaluate(sampler.model, EvalSettings(num_images=n, seed=3, setting=setting, batch_size=4),
                    mode="offline", progress=False)


@pytest.mark.parametrize("fast", [None, 2])
def test_the_sweep_is_the_evaluation_of_each_setting_and_keeps_the_best(ckpt, tmp_path, mean_score, fast):
    sampler = load_sampler(ckpt, SamplerOptions(device="cpu"))
    base = sampler.setting()
    combos = grid([1.0, 4.0], [(0.0, 1.0)], ["d0.9", "d0.99"])  # guidance acts at t = 1
    sweep = Sweep(sampler, base, Scoring("offline", seed=3, batch_size=4, progress=False), "cpu", tmp_path)
    result = sweep.run(combos, num_images=3, metric="frechet", fast=fast)
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    want = [_direct(ckpt, base, c, fast or 3)["frechet"] for c in combos]
    assert [r["frechet"] for r in rows] == want and len(set(want)) == 4  # four settings, four numbers
    assert result.chosen == combos[int(np.argmin(want))]
    assert result.metrics == _direct(ckpt, base, result.chosen, 3)  # the chosen setting with the full count
    assert result.record == {"metric": "frechet", "num_images": fast or 3, "settings": 4}
    assert "best" in (tmp_path / "sweep.md").read_text()


def test_one_setting_is_evaluated_without_a_sweep(ckpt, tmp_path, mean_score):
    sampler = load_sampler(ckpt, SamplerOptions(device="cpu"))
    row = grid([2.0], [(0.2, 0.7)], ["d0.9"])[0]
    result = Sweep(sampler, sampler.setting(), Scoring("offline", seed=3, batch_size=4, progress=False), "cpu",
                   tmp_path).run([row], num_images=3, metric="frechet", fast=2)
    assert result.record is None and not (tmp_path / "sweep.json").exists()
    assert result.metrics == _direct(ckpt, sampler.setting(), row, 3)
    assert result.weights == {"precision": "fp32"}
