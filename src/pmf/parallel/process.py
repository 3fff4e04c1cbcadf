"""Process-group helpers that degrade to one process: the same trainer runs as a plain CPU process, on one
GPU, or under ``torchrun`` on many GPUs (NCCL) or CPU processes (gloo). The only module that knows about
ranks: it alone reads the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``;
``rank``, ``world_size``, ``is_main_process``, ...); setup, sharding, gathering, broadcasting and the DDP wrapper
with its gradient hook live here."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _launched(name: str, default: int) -> int:
    """A number that torchrun-style launchers give each process in its environment."""
    return int(os.environ.get(name, default))


def rank() -> int:
    """This process's rank: the process group's, else the launcher's (``RANK``; 0 in a plain process), so it
    is right before ``setup`` too."""
    return dist.get_rank() if dist.is_initialized() else _launched("RANK", 0)


def world_size() -> int:
    """The number of processes of the run: the process group's, else the launcher's (``WORLD_SIZE``; 1)."""
    return dist.get_world_size() if dist.is_initialized() else _launched("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """Rank 0: the process that prints, writes the run folder and cleans it."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``; 0)."""
    return _launched("LOCAL_RANK", 0)


def local_world_size() -> int:
    """The number of processes on this node (``LOCAL_WORLD_SIZE``, else the world size)."""
    return _launched("LOCAL_WORLD_SIZE", world_size())


def setup(device: str | None = None, group: bool = False) -> DistInfo:
    """Initialise the process group when launched with ``WORLD_SIZE > 1`` (NCCL on CUDA, gloo on CPU) and
    pick this process's device; a plain process gets rank 0 of 1 (with ``group``, in a process group of one
    on 127.0.0.1, for code that needs one: FSDP2, DCP)."""
    world, node_rank = world_size(), local_rank()
    want_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if want_cuda:
        dev = torch.device("cuda", node_rank if world > 1 else torch.device(device or "cuda").index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if (world > 1 or group) and not dist.is_initialized():
        kw = {"device_id": dev} if want_cuda else {}
        if world == 1 and "MASTER_ADDR" not in os.environ:
            kw.update(init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        dist.init_process_group("nccl" if want_cuda else "gloo", timeout=datetime.timedelta(minutes=30), **kw)
    return DistInfo(rank(), world_size(), node_rank, dev)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a rendezvous or a local server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) without one (the launcher's numbers do not count)."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def shard(n: int, rank: int, world: int) -> range:
    """This rank's item indices: every ``world``-th from ``rank`` (balanced to within one item)."""
    return range(rank, n, world)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """Elementwise max over processes (identity in one process)."""
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over processes (identity in one process)."""
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Concatenate every rank's arrays (rows keyed by ``arrays["index"]``) on rank 0, sorted by index; None on
    the other ranks. Identity in one process (apart from the sort)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        rank, world = rank_world()
        parts = [None] * world if rank == 0 else None
        dist.gather_object(arrays, parts, dst=0)
        if rank != 0:
            return None
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in arrays}
    order = np.argsort(arrays["index"], kind="stable")
    return {k: v[order] for k, v in arrays.items()}


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; the backward returns this rank's slice of the incoming gradient."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``x`` [b, ...] (equal b on all ranks) concatenated in rank order [world * b, ...],
    with the gradient kept for the local rows only (what FD-loss needs: statistics of the global batch, each
    rank backpropagating into its own samples). Identity in one process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return _GatherRows.apply(x)


def wrap_ddp(model: torch.nn.Module, info: DistInfo, *, ordered: bool = False) -> torch.nn.Module:
    """DDP around ``model`` when running in several processes, else the model itself. The pMF loss sends
    exactly one forward with gradients through the wrapper (see ``pmf.objective``), so the default
    reducer settings apply; the auxiliary v-head always receives gradients. ``ordered``: average the gradients
    in rank order (``pmf.parallel.reduction.ddp_ordered_hook``, ``--reduce ordered``)."""
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if ordered:
        from .reduction import ddp_ordered_hook

        ddp.register_comm_hook(None, ddp_ordered_hook)
    return ddp


def print0(*args, info: DistInfo | None = None, **kwargs) -> None:
    """print on rank 0 only."""
    if info is None or info.is_main:
        print(*args, **kwargs, flush=True)
