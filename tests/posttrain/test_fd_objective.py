"""FD-loss post-training through the trainer (pmf.posttrain.fd_objective): exact resume, a 2-process gloo run against
one
process, the recorded setting and the one-line refusals. The representation is a small fixed network made
here (no weights to download)."""

import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from helpers import tiny_config
from pmf.checkpoints.load import latest_checkpoint, read_file
from pmf.errors import PMFError
from pmf.posttrain.fd_config import FDConfig
from pmf.training.config import EMAConfig, OptimConfig, SampleConfig

pytestmark = pytest.mark.usefixtures("one_thread")


class FixedFeatures(torch.nn.Module):
    """A frozen 'representation' of 8x8 gray images: a seeded conv with ReLU, pooled, and a seeded projection."""

    name, input_size, feature_dim = "fixed", 8, 6

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.proj = torch.nn.Linear(4 * 16, 6)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.requires_grad_(False)

    def preprocessing(self) -> dict:
        return {"range": "[-1, 1]", "resize": "none"}

    def forward(self, x):
        h = torch.relu(self.conv(x))  # (B, 4, 8, 8)
        return self.proj(torch.nn.functional.avg_pool2d(h, 2).flatten(1))  # (B, 6)


def use_fixed(monkeypatch=None):
    import pmf.posttrain.fd_objective as O

    def get(name, device=None):
        if name != "fixed":
            raise PMFError(f"unknown representation {name!r}")
        return FixedFeatures()

    if monkeypatch is not None:
        monkeypatch.setattr(O, "get_representation", get)
    else:
        O.get_representation = get


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 2-step pMF run whose checkpoint the FD runs start from (sampling setting omega 2 on [0.1, 0.8])."""
    from pmf.training.loop import train

    out = tmp_path_factory.mktemp("base")
    train(tiny_config(out, steps=2, ckpt_every=2, sample=SampleConfig(every=0, omega=2.0, t_min=0.1, t_max=0.8)),
          progress=False)
    return out


def fd_config(out, init, **kw):
    fd = dict(repr=["fixed"], fill=24, ema_beta=0.8)
    fd.update(kw.pop("fd", {}))
    base = dict(objective="fd", init=str(init), batch_size=8, steps=4, ckpt_every=2,
                optim=OptimConfig(name="adamw", lr=1e-3), ema=EMAConfig(halflives_kimg=[], decays=[0.5]),
                sample=SampleConfig(every=0), fd=FDConfig(**fd))
    base.update(kw)
    return tiny_config(out, **base)


def rows(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact_and_the_setting_is_recorded(tmp_path, base_run, monkeypatch):
    from pmf.training.loop import train

    use_fixed(monkeypatch)
    monkeypatch.setenv("PMF_CACHE", str(tmp_path / "cache"))
    train(fd_config(tmp_path / "whole", base_run), progress=False)
    train(fd_config(tmp_path / "part", base_run, steps=2), progress=False)
    cfg = json.loads((tmp_path / "part" / "config.json").read_text())
    cfg["steps"] = 4
    from pmf.training.config import TrainConfig

    train(TrainConfig.from_dict(cfg), resume="auto", progress=False)
    whole = read_file(latest_checkpoint(tmp_path / "whole" / "checkpoints"))
    part = read_file(latest_checkpoint(tmp_path / "part" / "checkpoints"))
    assert whole["step"] == part["step"] == 4
    for k, v in whole["model"].items():
        assert torch.equal(v, part["model"][k]), k
    for k in ("mu", "m2"):
        assert torch.equal(whole["fd_stats"]["fixed"][k], part["fd_stats"]["fixed"][k])
    assert [r["fd_fixed"] for r in rows(tmp_path / "whole")] == [r["fd_fixed"] for r in rows(tmp_path / "part")]
    # the post-trained weights moved, the v-head did not, and the setting of --init is the run's recorded one
    first = read_file(latest_checkpoint(base_run / "checkpoints"))["ema"]["hl0.05"]
    moved = [k for k, v in whole["model"].items() if not torch.equal(v, first[k])]
    assert moved and not any(k.startswith(("v_heads.", "v_final_layer.")) for k in moved)
    sample = whole["train_config"]["sample"]
    assert (sample["omega"], sample["t_min"], sample["t_max"]) == (2.0, 0.1, 0.8)
    ref = whole["train_config"]["fd"]["ref"][0]
    assert ref.startswith(str(tmp_path / "whole" / "fd_ref")) and "fixed/mu" in np.load(ref)


def test_queue_statistics_train_and_resume_exactly(tmp_path, base_run, monkeypatch):
    from pmf.training.config import TrainConfig
    from pmf.training.loop import train

    use_fixed(monkeypatch)
    monkeypatch.setenv("PMF_CACHE", str(tmp_path / "cache"))
    fd = dict(queue=20, fill=0 + 2)
    train(fd_config(tmp_path / "whole", base_run, fd=fd, steps=6, ckpt_every=3), progress=False)
    train(fd_config(tmp_path / "part", base_run, fd=fd, steps=3, ckpt_every=3), progress=False)
    cfg = json.loads((tmp_path / "part" / "config.json").read_text())
    train(TrainConfig.from_dict({**cfg, "steps": 6}), resume="auto", progress=False)
    a, b = rows(tmp_path / "whole"), rows(tmp_path / "part")
    assert [r["fd_fixed"] for r in a] == [r["fd_fixed"] for r in b]
    assert a[0]["fd_fixed"] > 0


def _ddp_worker(rank: int, port: int, out: str, init: str, cache: str) -> None:
    import sys

    sys.path[:0] = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]
    from pmf.parallel.process import cleanup
    from pmf.training.loop import train
    from test_fd_objective import fd_config, use_fixed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), PMF_CACHE=cache)
    torch.set_num_threads(1)
    use_fixed()
    train(fd_config(out, init, steps=3, ckpt_every=3), progress=False)
    cleanup()


@pytest.mark.slow  # about a minute on 2 busy cores: two spawned processes
def test_two_processes_equal_one_at_the_same_global_batch(tmp_path, base_run, monkeypatch):
    from pmf.parallel.process import free_port
    from pmf.training.loop import train

    use_fixed(monkeypatch)
    monkeypatch.setenv("PMF_CACHE", str(tmp_path / "cache"))
    train(fd_config(tmp_path / "one", base_run, steps=3, ckpt_every=3), progress=False)
    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path / "two"), str(base_run), str(tmp_path / "cache")),
             nprocs=2, join=True)
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        for key in ("fd_fixed", "grad_norm", "loss"):  # the gradient's size too: Adam would hide a wrong scale
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    w1 = read_file(latest_checkpoint(tmp_path / "one" / "checkpoints"))
    w2 = read_file(latest_checkpoint(tmp_path / "two" / "checkpoints"))
    for k, v in w1["model"].items():
        torch.testing.assert_close(w2["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(w2["fd_stats"]["fixed"]["m2"], w1["fd_stats"]["fixed"]["m2"], rtol=1e-9, atol=1e-9)


def test_bad_input_is_one_line_before_any_work(tmp_path, base_run, monkeypatch):
    from pmf.posttrain.fd_reference import write_reference
    from pmf.training.loop import train

    use_fixed(monkeypatch)
    with pytest.raises(PMFError, match="unknown representation 'nope'"):
        train(fd_config(tmp_path / "a", base_run, fd=dict(repr=["nope"])), progress=False)
    sums = dict(n=np.array([5.0]), s=np.ones((1, 6)), o=np.ones((1, 6, 6)) * 3)
    other = FixedFeatures()
    other.name = "other"
    write_reference(tmp_path / "other.npz", sums, other, 8, "digits")
    with pytest.raises(PMFError, match="holds statistics of other, not of fixed"):
        train(fd_config(tmp_path / "b", base_run, fd=dict(ref=[str(tmp_path / "other.npz")])), progress=False)
    write_reference(tmp_path / "big.npz", sums, FixedFeatures(), 16, "digits")
    with pytest.raises(PMFError, match="16px images"):
        train(fd_config(tmp_path / "c", base_run, fd=dict(ref=[str(tmp_path / "big.npz")])), progress=False)
    for name in "abc":
        assert not (tmp_path / name).exists()  # nothing written


def test_a_setting_without_guidance_post_trains_at_omega_1(tmp_path):
    from pmf.posttrain.fd_objective import resolve_setting
    from pmf.training.loop import train

    plain = tmp_path / "plain"
    train(tiny_config(plain, steps=1, ckpt_every=1, sample=SampleConfig(every=0)), progress=False)
    cfg = fd_config(tmp_path / "fd", plain)
    line = resolve_setting(cfg)
    assert "no guidance" in line and "omega 1" in line
    assert (cfg.fd.omega, cfg.sample.omega) == (1.0, 1.0)
    cfg = fd_config(tmp_path / "x", plain)
    cfg.init = None
    with pytest.raises(PMFError, match="give --init"):
        resolve_setting(cfg)


def test_per_class_statistics_run_with_class_rows_of_the_data(tmp_path, base_run, monkeypatch):
    from pmf.training.loop import train

    use_fixed(monkeypatch)
    monkeypatch.setenv("PMF_CACHE", str(tmp_path / "cache"))
    train(fd_config(tmp_path / "pc", base_run, steps=2, fd=dict(per_class=True, fill=200)), progress=False)
    ck = read_file(latest_checkpoint(tmp_path / "pc" / "checkpoints"))
    assert ck["fd_stats"]["fixed"]["mu"].shape == (10, 6)
    ref = np.load(ck["train_config"]["fd"]["ref"][0])
    assert ref["fixed/class_mu"].shape == (10, 6)
    # the class rows average (weighted by their counts) to the class-agnostic mean
    n = ref["fixed/class_count"]
    np.testing.assert_allclose((n[:, None] * ref["fixed/class_mu"]).sum(0) / n.sum(), ref["fixed/mu"], rtol=1e-10)
    assert rows(tmp_path / "pc")[-1]["fd_fixed"] > 0
