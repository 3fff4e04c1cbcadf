"""The training loop on a 2-block model of 8x8 digits: exact resume, NaN stop, bad inputs, outputs."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from helpers import TINY, losses, tiny_config
from pmf.checkpoints.load import list_checkpoints, load_model, read_file
from pmf.data.order import DataOrder
from pmf.errors import PMFError
from pmf.training.config import TrainConfig
from pmf.training.loop import step_seed, train
from pmf.training.recipes import recipe


def test_resume_continues_with_exactly_the_same_losses(tmp_path):
    full = tiny_config(tmp_path / "full")
    train(full, progress=False)
    part = tiny_config(tmp_path / "part", steps=3)
    train(part, progress=False)
    part.steps = 6
    train(part, resume="auto", progress=False)
    assert losses(tmp_path / "full") == losses(tmp_path / "part")  # bitwise: same batches, draws, optimiser
    a = read_file(tmp_path / "full" / "checkpoints" / "step_00000006.pt")
    b = read_file(tmp_path / "part" / "checkpoints" / "step_00000006.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for name in a["ema"]:
        for k in a["ema"][name]:
            assert torch.equal(a["ema"][name][k], b["ema"][name][k]), (name, k)


def test_run_outputs_and_sampling_from_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run", keep_last=1)
    summary = train(cfg, progress=False)
    run = tmp_path / "run"
    ckpts = list_checkpoints(run / "checkpoints")
    assert [s for s, _ in ckpts] == [6]  # keep_last=1 deleted step 3
    saved = json.loads(ckpts[0][1].with_suffix(".json").read_text())
    assert TrainConfig.from_dict(saved) == cfg  # resolved config beside the checkpoint
    assert (run / "samples" / "step_00000003.png").is_file() and (run / "samples" / "step_00000006.png").is_file()
    assert [r[0] for r in losses(run)] == [1, 2, 3, 4, 5, 6]
    assert summary["last_checkpoint"] == str(ckpts[0][1])
    model = load_model(ckpts[0][1], ema="d0.9")
    assert model.config.input_size == 8 and model.has_v_head
    from pmf.cli import main

    assert main(["sample", "--checkpoint", str(ckpts[0][1]), "--out", str(tmp_path / "s"), "--per-class", "1",
                 "--no-png"]) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["images"].shape == (10, 8, 8, 1)


def test_nan_loss_stops_naming_the_step_and_keeps_a_good_checkpoint(tmp_path, monkeypatch):
    import pmf.training.step as T

    real, calls = T.pmf_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            out = dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(T, "pmf_loss", poisoned)
    with pytest.raises(PMFError, match="at step 5"):
        train(tiny_config(tmp_path / "run"), progress=False)
    steps = [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert steps == [3, 4]  # the regular one and the state before the bad step
    state = read_file(tmp_path / "run" / "checkpoints" / "step_00000004.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _no_training_happened(out):
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "labels", "divisible", "preset"])
def test_bad_inputs_fail_before_training(tmp_path, monkeypatch, case):
    out = tmp_path / "run"
    if case == "missing":
        with pytest.raises(PMFError, match="not found"):
            train(tiny_config(out, data=str(tmp_path / "nowhere")), progress=False)
    elif case == "empty":
        (tmp_path / "empty" / "cat").mkdir(parents=True)
        with pytest.raises(PMFError, match="no images found"):
            train(tiny_config(out, data=str(tmp_path / "empty")), progress=False)
    elif case == "labels":
        np.savez(tmp_path / "d.npz", images=np.zeros((4, 8, 8, 1), np.uint8), labels=np.array([0, 1, 2, 12]))
        with pytest.raises(PMFError, match="10 classes"):
            train(tiny_config(out, data=str(tmp_path / "d.npz")), progress=False)
    elif case == "divisible":
        monkeypatch.setenv("WORLD_SIZE", "3")
        with pytest.raises(PMFError, match="not divisible"):
            train(tiny_config(out), progress=False)
    else:
        with pytest.raises(PMFError, match="unknown architecture"):
            tiny_config(out, arch="pMF-XL/2")
        with pytest.raises(PMFError, match="unknown recipe"):
            recipe("imagenet-giant")
    _no_training_happened(out)


def test_resume_from_another_architecture_is_refused(tmp_path):
    train(tiny_config(tmp_path / "a", steps=3), progress=False)
    other = tiny_config(tmp_path / "b", model_overrides={**TINY, "hidden_size": 48})
    with pytest.raises(PMFError, match="another architecture.*hidden_size"):
        train(other, resume=str(tmp_path / "a"), progress=False)
    _no_training_happened(tmp_path / "b")


def test_data_order_splits_global_batches_over_ranks_and_covers_each_epoch():
    one = DataOrder(10, 4, 0, 1, seed=1)
    ranks = [DataOrder(10, 4, r, 2, seed=1) for r in range(2)]
    for step in range(7):
        assert np.array_equal(one.indices(step), np.concatenate([o.indices(step) for o in ranks]))
    stream = np.concatenate([one.indices(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])
    assert len({step_seed(0, s, r) for s in range(50) for r in range(8)}) == 400


def test_saved_configs_with_a_perceptual_dict_still_load():
    from pmf.perceptual import PerceptualConfig

    data = {**recipe("tiny").to_dict(), "perceptual": {"lpips": True, "convnext": False, "max_t": 0.7}}
    cfg = TrainConfig.from_dict(json.loads(json.dumps(data)))
    assert cfg.perceptual == PerceptualConfig(lpips=True, max_t=0.7)
    assert TrainConfig.from_dict({**data, "perceptual": None}).perceptual is None
    with pytest.raises(PMFError, match="unknown perceptual fields"):
        TrainConfig.from_dict({**data, "perceptual": {"lpips": True, "lpips_weight": 1.0}})


def test_perceptual_term_is_built_from_the_config_and_enters_the_loss(tmp_path, monkeypatch):
    import pmf.perceptual as P

    seen = {}

    def fake_build(config, device):
        seen["config"] = config

        def term(x_pred, x, t):
            seen["calls"] = seen.get("calls", 0) + 1
            per = (x_pred - x).pow(2).flatten(1).mean(1) * (t < config.max_t)
            return per, {"loss_fake": per.mean().detach()}
        return term

    monkeypatch.setattr(P, "build_perceptual", fake_build)
    cfg = tiny_config(tmp_path / "run", steps=2, perceptual=dict(lpips=True, convnext=False, max_t=0.7))
    train(cfg, progress=False)
    assert seen["calls"] == 2 and seen["config"].lpips and seen["config"].max_t == 0.7
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_fake" in r for r in rows)
