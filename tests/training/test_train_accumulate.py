"""Gradient accumulation (``--grad-accum``): 3 steps of pMF-MNIST/7 at batch 64 in 4 micro-batches against one
pass, with Muon and AdamW, with the perceptual losses, under 2-process DDP and FSDP2 (gloo), and an exact resume.

Why float64: the comparison checks that every micro-batch gets the rows of the whole batch's draws and that the
gradients add up to the batch mean's; in float32 the different summation order of a micro-batch's matmuls leaves
about 1e-7 in the gradients, which Adam's normalisation of near-zero gradients (and Muon's of the zero-initialised
output layers) turns into up to 1e-5 after 3 steps. In float64 the runs agree to about 1e-15, so the 1e-6 bound
of the acceptance holds with room, and any real difference (a draw of the wrong rows, a missing scale, a
reduction of a partial gradient) is far above it."""

import functools
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

from helpers import losses, tiny_config
from pmf.checkpoints.load import latest_checkpoint, load_model, read_file
from pmf.cli import main
from pmf.parallel.process import free_port
from pmf.training.config import TrainConfig
from pmf.training.loop import train
from pmf.training.recipes import recipe

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-6  # relative per tensor, |a - b| / |b| (Frobenius norms), raw weights and every EMA


def mnist_config(out, **kw) -> TrainConfig:
    """The MNIST recipe (pMF-MNIST/7, batch 64) for 3 steps with a checkpoint at the end, no grids."""
    data = recipe("mnist").to_dict()
    data.update(out=str(out), steps=3, ckpt_every=3, log_every=1, sample=dict(every=0), num_workers=0)
    for key, value in kw.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data[key], dict) else value
    return TrainConfig.from_dict(data)


def float64_training() -> None:
    """Train in float64: parameters by the default dtype, the images by the model input."""
    import pmf.training.loop as T

    torch.set_default_dtype(torch.float64)
    if not getattr(T.to_model_input, "float64", False):
        to_input = T.to_model_input

        def to_double(*args):
            return to_input(*args).double()

        to_double.float64 = True
        T.to_model_input = to_double


@pytest.fixture
def float64(monkeypatch):
    import pmf.training.loop as T

    monkeypatch.setattr(T, "to_model_input", T.to_model_input)  # restored afterwards
    float64_training()
    yield
    torch.set_default_dtype(torch.float32)


def single_file(path):
    """A training checkpoint as one file (a sharded folder of FSDP2 is gathered into one beside it)."""
    from pmf.training.state import to_single_file

    return to_single_file(path, path.with_name(path.name + ".pt")) if path.is_dir() else path


def compare(a, b, tol: float = TOL) -> float:
    """Max relative difference over the raw weights and every EMA of the newest checkpoints (single files, their
    tensors as stored) of two run folders; every tensor within ``tol``. The zero-initialised output layer has
    moved, so the bound is not met by two copies of the starting weights."""
    fa, fb = (read_file(single_file(latest_checkpoint(r / "checkpoints"))) for r in (a, b))
    worst = 0.0
    for ema in ("raw", *fb["ema"]):
        sa, sb = (f["model"] if ema == "raw" else f["ema"][ema] for f in (fa, fb))
        assert set(sa) == set(sb) and len(sa) > 50
        for k in sa:
            x, y = sa[k].double(), sb[k].double()
            err = ((x - y).norm() / y.norm().clamp_min(1e-30)).item()
            assert err <= tol, (ema, k, err)
            worst = max(worst, err)
    assert fa["model"]["u_final_layer.linear.weight"].abs().max() > 0
    return worst


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_four_micro_batches_equal_one_pass(tmp_path, float64, optimizer):
    one, four = tmp_path / "one", tmp_path / "four"
    s1 = train(mnist_config(one, optim=dict(name=optimizer)), progress=False)
    s4 = train(mnist_config(four, optim=dict(name=optimizer), grad_accum=4), progress=False)
    assert abs(s4["loss"] - s1["loss"]) <= 1e-9 * abs(s1["loss"])  # the metrics of the batch, not of a part
    print(f"{optimizer}, float64: grad-accum 4 vs one pass, max relative difference {compare(four, one):.2e}")


@pytest.fixture
def random_perceptual(monkeypatch):
    """build_perceptual with random weights and a small ConvNeXt-V2: the tests cannot download weights."""
    pytest.importorskip("timm")
    import pmf.perceptual as P

    original = P.build_perceptual

    def build(config, device):
        config.convnext_model, config.crop_size = "convnextv2_atto", 32
        with pytest.warns(UserWarning, match="RANDOM"):
            return original(config, device, random_init=True)

    monkeypatch.setattr(P, "build_perceptual", build)


def perceptual_runs(tmp_path, make) -> float:
    perc = dict(lpips=True, convnext=True, max_t=0.9)
    one, four = tmp_path / "one", tmp_path / "four"
    s1 = train(make(one, perceptual=perc), progress=False)
    s4 = train(make(four, perceptual=perc, grad_accum=4), progress=False)
    assert s1["loss_lpips"] > 0 and abs(s4["loss_lpips"] - s1["loss_lpips"]) <= 1e-6 * s1["loss_lpips"]  # float32
    return compare(four, one)


def test_micro_batches_cut_the_perceptual_crops_of_the_whole_batch(tmp_path, float64, random_perceptual):
    """The 2-block model on 8x8 digits, batch 8 in 4 micro-batches of 2, with LPIPS and ConvNeXt."""
    worst = perceptual_runs(tmp_path, lambda out, **kw: tiny_config(out, steps=3, ckpt_every=3, sample=dict(every=0),
                                                                    **kw))
    print(f"perceptual, tiny model, float64: max relative difference {worst:.2e}")


@pytest.mark.slow
def test_mnist_with_perceptual_losses_in_four_micro_batches(tmp_path, float64, random_perceptual):
    worst = perceptual_runs(tmp_path, mnist_config)
    print(f"perceptual, pMF-MNIST/7, float64: max relative difference {worst:.2e}")


def test_resume_mid_run_with_accumulation_is_exact(tmp_path):
    """The 2-block model, batch 8 in 4 micro-batches: 4 steps against 2, then a resume to 4 (float32, bits)."""
    full, part = tmp_path / "full", tmp_path / "part"
    make = functools.partial(tiny_config, grad_accum=4, ckpt_every=2, sample=dict(every=0))
    train(make(full, steps=4), progress=False)
    train(make(part, steps=2), progress=False)
    train(make(part, steps=4), resume="auto", progress=False)
    a, b = (load_model(latest_checkpoint(r / "checkpoints"), ema="raw").state_dict() for r in (full, part))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(full)[2:] == losses(part)[2:] and len(losses(full)) == 4


def _spawn_worker(rank: int, port: int, runs: list) -> None:
    sys.path[:0] = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]
    from pmf.parallel.process import cleanup
    from test_train_accumulate import float64_training, mnist_config

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    float64_training()
    for out, kw in runs:
        train(mnist_config(out, **kw), progress=False)
    cleanup()


@pytest.mark.slow
def test_accumulation_under_two_processes_ddp_and_fsdp(tmp_path, float64):  # float64: the sharded folders read back
    """2 processes (gloo), 32 images each in 4 micro-batches of 8, against one pass: under DDP and under FSDP2."""
    ddp1, ddp4, fsdp1, fsdp4 = (tmp_path / n for n in ("ddp1", "ddp4", "fsdp1", "fsdp4"))
    runs = [(ddp1, {}), (ddp4, dict(grad_accum=4)), (fsdp1, dict(parallel="fsdp")),
            (fsdp4, dict(grad_accum=4, parallel="fsdp"))]
    mp.spawn(_spawn_worker, args=(free_port(), runs), nprocs=2, join=True)
    print(f"float64, grad-accum 4 vs one pass: ddp x 2 {compare(ddp4, ddp1):.2e}, fsdp x 2 {compare(fsdp4, fsdp1):.2e}"
          f"; fsdp x 2 with grad-accum 4 vs ddp x 2 in one pass {compare(fsdp4, ddp1):.2e}")


def test_an_accumulation_that_does_not_divide_the_batch_is_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    assert main(["train", "--recipe", "tiny", "--out", str(run), "--grad-accum", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "grad_accum must be a divisor of batch_size 16, got 3" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # 8 images per process
    assert main(["train", "--recipe", "tiny", "--out", str(run), "--grad-accum", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--grad-accum 16 does not divide the per-process batch of 8" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
