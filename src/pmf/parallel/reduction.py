"""Gradient reduction in one summation order for every layout. ``--reduce ordered`` (the default on gloo) sums
every gradient element over the ranks as a balanced tree in rank order, under DDP (``ddp_ordered_hook``) and
under FSDP2 / HSDP (``ordered_reduce_scatter``), so that the three modes give the same bits (docs/parallel.md)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..errors import PMFError
from ..vocabulary import REDUCE_MODES


def resolve_reduce(mode: str, backend: str | None) -> str:
    """``ordered`` or ``native``: ``auto`` is ordered on gloo (CPU processes) and native on NCCL."""
    if mode not in REDUCE_MODES:
        raise PMFError(f"reduce must be one of {', '.join(REDUCE_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    return "ordered" if backend == "gloo" else "native"


def tree_sum(rows: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 as a balanced binary tree in index order: for 4 rows (r0 + r1) + (r2 + r3). Float addition
    of two numbers is commutative, so a tree of two equal halves gives the same bits however the halves are
    computed: this is what lets a 2 x S HSDP job (S-way tree inside a group, 2-way sum across groups) and
    DDP / FSDP over 2S processes agree to the bit. Returns a new tensor."""
    return rows[0].clone() if rows.shape[0] == 1 else _tree(rows)


def _tree(rows: torch.Tensor) -> torch.Tensor:  # a view of rows for one row, else a new tensor
    n = rows.shape[0]
    if n == 1:
        return rows[0]
    h = n // 2
    a, b = _tree(rows[:h]), _tree(rows[h:])
    return a + b if h == 1 else a.add_(b)


def ordered_reduce_scatter_(output: torch.Tensor, flat: torch.Tensor, group) -> torch.Tensor:
    """Rank r's 1/N block of the sum over the group of every rank's ``flat`` (N equal blocks), summed in rank
    order by ``tree_sum``: one all_to_all moves block r of every rank to rank r (the volume of a ring
    reduce-scatter), which then adds them locally."""
    n = dist.get_world_size(group)
    recv = torch.empty_like(flat)
    dist.all_to_all_single(recv, flat.contiguous(), group=group)
    return output.copy_(tree_sum(recv.view(n, -1)).view_as(output))


def ordered_all_reduce_(flat: torch.Tensor, group=None) -> torch.Tensor:
    """In place: the mean over the group of ``flat`` (contiguous), summed in rank order
    (``ordered_reduce_scatter_`` of the tensor padded to N equal blocks, divided by N, then an all-gather); the
    same bits on every rank and the same bits as the FSDP reduce-scatter of ``OrderedReduceScatter`` for every
    element."""
    n = dist.get_world_size(group)
    numel = flat.numel()
    c = -(-numel // n)
    if numel == n * c:
        padded = flat.view(-1)
    else:
        padded = flat.new_zeros(n * c)
        padded[:numel] = flat.view(-1)
    mine = ordered_reduce_scatter_(flat.new_empty(c), padded, group).div_(n)
    gathered = padded if numel == n * c else flat.new_empty(n * c)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the name before 2.14
    gather(gathered, mine, group=group)
    if gathered is not padded:
        flat.view(-1).copy_(gathered[:numel])
    return flat


def ddp_ordered_hook(state, bucket):
    """DDP communication hook: average each gradient bucket with ``ordered_all_reduce_`` (the reducer leaves
    the division to the hook)."""
    buf = bucket.buffer()
    ordered_all_reduce_(buf, state)
    fut = torch.futures.Future()
    fut.set_result(buf)
    return fut


def _reduce_scatter_base():
    try:
        from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter
    except ImportError:  # older layouts of the module
        from torch.distributed.fsdp._fully_shard._fsdp_collectives import ReduceScatter
    return ReduceScatter


def ordered_reduce_scatter():
    """An FSDP2 reduce-scatter (``FSDPModule.set_custom_reduce_scatter``) that sums in rank order; used with
    ``set_force_sum_reduction_for_comms(True)``, so FSDP2 divides by the data-parallel size afterwards, as
    ``ordered_all_reduce_`` does."""

    class OrderedReduceScatter(_reduce_scatter_base()):
        def allocate(self, size, *, dtype, device):
            return torch.empty(*size, dtype=dtype, device=device)

        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            if op not in (dist.ReduceOp.SUM, dist.ReduceOp.RedOpType.SUM):
                raise RuntimeError(f"the ordered reduce-scatter sums; FSDP2 asked for {op}")
            ordered_reduce_scatter_(output_tensor, input_tensor, group)
            return None

    return OrderedReduceScatter()


def use_ordered_reduction(model: torch.nn.Module) -> None:
    """Every FSDP2 module of ``model`` reduce-scatters its gradients in rank order (a no-op without FSDP2)."""
    from torch.distributed.fsdp import FSDPModule

    comm = ordered_reduce_scatter()
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)
            module.set_custom_reduce_scatter(comm)
