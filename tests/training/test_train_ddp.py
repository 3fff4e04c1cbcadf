"""Two CPU processes (gloo) under DDP: the pMF gradients, through the JVP-based objective, equal those of one
process on the concatenated batch.

Why this comparison is exact: the pMF batch rules (the first floor(b * data_proportion) samples use r = t,
the first k samples are label-dropped) act on each device batch, so each rank draws its own ``Draws`` for its
own b images. Once drawn, the loss is a per-sample function of (image, label, draws) averaged over the batch:
the guidance passes, the JVP and the adaptive weights never mix samples. One process given the concatenated
images, labels and the concatenation of the two ranks' draws therefore computes loss = mean over 2b samples
= the mean of the two per-rank losses, whose gradient is what DDP's all-reduce (an average) must produce."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import TINY, end_process_group
from pmf.model_configs import model_config
from pmf.nn.model import PMFDiT
from pmf.objective import JVP_MODES, Draws, pmf_loss, sample_draws
from pmf.parallel.process import free_port

B_LOCAL, WORLD = 6, 2
LOSS_KW = dict(P_mean=0.8, P_std=0.8, data_proportion=0.5, cfg_max=7.0, cfg_beta=1.0, class_dropout_prob=0.3,
               noise_scale=1.0)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = PMFDiT(model_config("pMF-Tiny/4", **TINY)).double()
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():  # leave the zero-initialised gates and output layers, so every gradient is non-zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = torch.rand(B_LOCAL * WORLD, 1, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 10, (B_LOCAL * WORLD,), generator=gen)
    return model, x, y


def _draws(x_local: torch.Tensor, rank: int) -> Draws:
    d = sample_draws(x_local, generator=torch.Generator().manual_seed(1000 + rank), **LOSS_KW)
    d.omega[0] = 3.0  # make sure guidance (v_c != v_u) is active on every rank
    d.t_min[0], d.t_max[0] = 0.0, 1.0
    return d


def _worker(rank: int, init_file: str, out_dir: str, jvp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model, x, y = _setup()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    out = pmf_loss(ddp, x[sl], y[sl], _draws(x[sl], rank), num_classes=10, jvp=jvp,
                   no_grad_net=ddp.module)
    out.loss.backward()
    torch.save({n: p.grad for n, p in model.named_parameters()}, os.path.join(out_dir, f"grad{rank}.pt"))
    del ddp, out
    end_process_group()


@pytest.mark.parametrize("jvp", JVP_MODES)
def test_ddp_gradients_equal_single_process_on_concatenated_batch(tmp_path, jvp):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), jvp), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"grad{r}.pt") for r in range(WORLD)]

    model, x, y = _setup()
    parts = [_draws(x[r * B_LOCAL:(r + 1) * B_LOCAL], r) for r in range(WORLD)]
    draws = Draws(**{f: torch.cat([getattr(p, f) for p in parts]) for f in parts[0].__dataclass_fields__})
    pmf_loss(model, x, y, draws, num_classes=10, jvp=jvp).loss.backward()
    reference = {n: p.grad for n, p in model.named_parameters()}

    assert set(ranks[0]) == set(reference)
    nonzero = 0
    for name, ref in reference.items():
        for g in ranks:
            assert g[name] is not None, name
            torch.testing.assert_close(g[name], ref, rtol=1e-9, atol=1e-12, msg=name)
        nonzero += int(ref.abs().sum() > 0)
    assert nonzero > len(reference) // 2  # the comparison is not between zeros

    # A broken synchronisation (each rank keeping its local gradient) would differ from the reference.
    model.zero_grad()
    local = Draws(**{f: getattr(parts[0], f) for f in parts[0].__dataclass_fields__})
    pmf_loss(model, x[:B_LOCAL], y[:B_LOCAL], local, num_classes=10, jvp=jvp).loss.backward()
    assert not torch.allclose(model.u_final_layer.linear.weight.grad, reference["u_final_layer.linear.weight"])



def _train_worker(rank: int, port: int, out: str) -> None:
    import sys

    sys.path[:0] = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))]
    from helpers import tiny_config
    from pmf.parallel.process import cleanup
    from pmf.training.loop import train

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    summary = train(tiny_config(out, steps=2, ckpt_every=2, sample=dict(every=0)), progress=False)
    torch.save(summary, os.path.join(out, f"summary{rank}.pt"))
    cleanup()


def test_trainer_runs_under_two_processes(tmp_path):
    mp.spawn(_train_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2  # written by rank 0 only
    s0, s1 = (torch.load(tmp_path / f"summary{r}.pt") for r in range(WORLD))
    assert s0["loss_u"] == s1["loss_u"]  # metrics are all-reduced means over the two ranks
    assert (tmp_path / "checkpoints" / "step_00000002.pt").is_file()
