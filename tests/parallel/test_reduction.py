"""The ordered reduction on CPU processes (gloo): the tree sum in rank order, under the all-reduce, the
reduce-scatter, FSDP2's comm hook and DDP's, equal on every rank; the reduce modes and their checks."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import end_process_group, launcher_env, tiny_config
from pmf import parallel as P
from pmf.errors import PMFError
from pmf.parallel.process import DistInfo, free_port, wrap_ddp

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tree_sum_and_reduce_modes():
    rows = torch.tensor([[1e8], [1.0], [-1e8], [1.0]], dtype=torch.float32)
    # float32: 1e8 + 1 rounds to 1e8, so the order shows; the tree pairs (r0 + r1) + (r2 + r3)
    assert P.tree_sum(rows).item() == 0.0
    assert ((rows[0] + rows[1] + rows[2]) + rows[3]).item() == 1.0  # the running sum in rank order
    assert P.tree_sum(rows[:3]).item() == rows[0].item() + (rows[1] + rows[2]).item()  # 3 rows: r0 + (r1 + r2)
    assert P.resolve_reduce("auto", "gloo") == "ordered" and P.resolve_reduce("auto", "nccl") == "native"
    assert P.resolve_reduce("native", "gloo") == "native"
    with pytest.raises(PMFError, match="reduce must be one of"):
        P.resolve_reduce("fast", "gloo")
    with pytest.raises(PMFError, match="reduce"):
        tiny_config("x", reduce="fast")


def _reduce_worker(rank: int, world: int, port: int, out: str) -> None:
    launcher_env(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    every = [torch.randn(37, generator=torch.Generator().manual_seed(100 + r)) * 10.0 ** (3 * r) for r in range(world)]
    result = {"all_reduce": P.ordered_all_reduce_(every[rank].clone())}
    # FSDP2's layout: the input is world equal blocks, rank r keeps the sum of block r
    flat = torch.cat([every[rank], every[rank][:3]])  # 40 elements, 10 per rank
    result["reduce_scatter"] = P.ordered_reduce_scatter_(torch.empty(10), flat, dist.group.WORLD)
    comm = P.ordered_reduce_scatter()
    buf = comm.allocate((10,), dtype=torch.float32, device=torch.device("cpu"))
    assert comm(buf, flat, dist.group.WORLD, dist.ReduceOp.SUM) is None
    result["comm"] = buf
    # DDP with the hook: a gradient bucket averaged in rank order
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    ddp = wrap_ddp(lin, DistInfo(rank, world), ordered=True)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(rank)) * 10.0 ** (2 * rank)
    ddp(x).square().sum().backward()
    result["ddp"] = {n: p.grad.clone() for n, p in lin.named_parameters()}
    torch.save(result, out + f".{rank}")
    del ddp
    end_process_group()


def test_ordered_reduction_sums_in_rank_order(tmp_path):
    """Under 4 gloo processes the ordered all-reduce, reduce-scatter, FSDP2 comm and DDP hook give, on every
    rank, the tree sum in rank order (values spread over 9 orders of magnitude, so another order shows)."""
    world, out = 4, str(tmp_path / "reduce.pt")
    mp.spawn(_reduce_worker, args=(world, free_port(), out), nprocs=world, join=True)
    every = torch.stack([torch.randn(37, generator=torch.Generator().manual_seed(100 + r)) * 10.0 ** (3 * r)
                         for r in range(world)])
    want = P.tree_sum(every) / world
    other = every.sum(0) / world
    assert not torch.equal(want, other)  # the order matters for these values
    flat = torch.cat([every, every[:, :3]], 1)
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    grads = []
    for r in range(world):
        lin.zero_grad()
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(r)) * 10.0 ** (2 * r)
        lin(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in lin.named_parameters()})
    for r in range(world):
        got = torch.load(out + f".{r}")
        assert torch.equal(got["all_reduce"], want)
        assert torch.equal(got["reduce_scatter"], P.tree_sum(flat[:, 10 * r:10 * r + 10]))
        assert torch.equal(got["comm"], got["reduce_scatter"])
        for n, g in got["ddp"].items():
            assert torch.equal(g, P.tree_sum(torch.stack([gr[n] for gr in grads])) / world), n
