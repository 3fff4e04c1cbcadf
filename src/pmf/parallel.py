"""Sharded training: FSDP2 (``torch.distributed.fsdp.fully_shard``) over a 1-D mesh of all ranks, or HSDP over a
2-D (replicate x shard) mesh, and the owner-based orthogonalisation that lets Muon run on sharded matrices.

Layout. ``fully_shard`` is applied to every transformer ``Block`` and then to the root ``PMFDiT``; each
parameter becomes a DTensor sharded row-wise (``Shard(0)``, torch.chunk sizes) over the mesh's ``shard``
dimension (and replicated over ``replicate`` under HSDP). Gradients come out of backward already averaged
(reduce-scatter inside a shard group, all-reduce across replicas), the same average DDP computes.

Reduction order. ``--reduce ordered`` (the default on gloo) sums every gradient element over the ranks as a
balanced tree in rank order, under DDP (``ddp_ordered_hook``) and under FSDP2 / HSDP (``ordered_reduce_scatter``),
so that the three modes give the same bits (docs/parallel.md).

Muon. Newton-Schulz needs whole matrices. ``orthogonalize_sharded`` gives each matrix one owner rank in its
shard group (greedy balance of the Newton-Schulz cost m n min(m, n)), sends every rank's row block of each
matrix to its owner in one ``all_to_all``, orthogonalises the owner's matrices there (same-shape matrices
stacked into one batched call), and sends the row blocks of the results back in a second ``all_to_all``.
Every other part of the optimiser is elementwise and runs on the local shards with no communication."""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist

from .errors import PMFError

PARALLEL_MODES = ("ddp", "fsdp", "hsdp")


def is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view sharing its storage), a plain tensor unchanged."""
    return t.to_local() if is_dtensor(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective over the DTensor's mesh: every rank must call it), a plain tensor unchanged."""
    return t.full_tensor() if is_dtensor(t) else t


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def build_mesh(parallel: str, device: torch.device, shard_size: int | None = None):
    """The device mesh of ``parallel`` over all ranks: 1-D ``("shard",)`` for fsdp; 2-D ``("replicate",
    "shard")`` for hsdp with ``shard_size`` ranks per shard group (default: the local world size, i.e. shard
    within a node and replicate across nodes)."""
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if parallel == "fsdp":
        return init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    if parallel != "hsdp":
        raise PMFError(f"parallel must be one of {', '.join(PARALLEL_MODES)}, got {parallel!r}")
    shard = shard_size or local_world_size()
    if shard < 1 or world % shard:
        raise PMFError(f"--shard-size {shard} does not divide the number of processes ({world})")
    return init_device_mesh(device.type, (world // shard, shard), mesh_dim_names=("replicate", "shard"))


def shard_group(mesh):
    """The process group of the mesh's shard dimension."""
    return mesh.get_group("shard")


def mixed_precision(bf16: bool):
    """(block policy, root policy). bf16: parameters cast to bfloat16 for compute, master weights and the
    gradient reduce-scatter in float32. The root does not cast its inputs: times, guidance scales and the
    intervals enter the embedders in float32 and autocast decides per op (norms, softmax and the 1/t division
    stay in float32 as without sharding)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if not bf16:
        return MixedPrecisionPolicy(), MixedPrecisionPolicy()
    return (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False))


def shard_model(model: torch.nn.Module, mesh, *, bf16: bool = False) -> torch.nn.Module:
    """``fully_shard`` each transformer block, then the root (in place; returns ``model``)."""
    from torch.distributed.fsdp import fully_shard

    from .nn.layers import Block

    block_mp, root_mp = mixed_precision(bf16)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh, mp_policy=block_mp)
    fully_shard(model, mesh=mesh, mp_policy=root_mp)
    return model


# ---------------------------------------------------------------------------------------------------------
# Gradient reduction in one summation order for every layout.

REDUCE_MODES = ("auto", "ordered", "native")


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


# ---------------------------------------------------------------------------------------------------------
# Owner-based Newton-Schulz on row-sharded matrices.

def ns_cost(shape) -> int:
    """Newton-Schulz work of one m x n matrix, up to a constant: m n min(m, n)."""
    m, n = shape
    return m * n * min(m, n)


def assign_owners(shapes: list[tuple[int, int]], ranks: int) -> list[int]:
    """Owner rank of each matrix: largest cost first to the least-loaded rank (ties: lowest rank, then input
    order), so that every rank of the group computes the same assignment."""
    load = [0] * ranks
    owners = [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: (-ns_cost(shapes[i]), i)):
        r = min(range(ranks), key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += ns_cost(shapes[i])
    return owners


def _rows(m: int, ranks: int, rank: int) -> tuple[int, int]:
    """(first row, row count) of ``rank``'s Shard(0) block of m rows (torch.chunk sizes)."""
    c = -(-m // ranks)
    start = min(m, rank * c)
    return start, min(m, start + c) - start


def orthogonalize_sharded(blocks: list[torch.Tensor], shapes: list[tuple[int, int]], group, orthogonalize,
                          comm_dtype=torch.float32) -> list[torch.Tensor]:
    """Row blocks of ``orthogonalize`` applied to whole matrices. ``blocks[i]`` is this rank's Shard(0) block of
    matrix i (global shape ``shapes[i]``); every rank of ``group`` passes the same matrices in the same order.
    ``orthogonalize(stack [n, m, k]) -> [n, m, k]`` runs on each owner for its matrices, one call per shape.
    Returns this rank's row blocks of the results, in ``comm_dtype``."""
    N, rank = dist.get_world_size(group), dist.get_rank(group)
    owners = assign_owners(shapes, N)
    chunk = [-(-m // N) * n for m, n in shapes]  # elements of one padded row block
    send_parts: list[list[torch.Tensor]] = [[] for _ in range(N)]
    for i, (b, (m, n)) in enumerate(zip(blocks, shapes)):
        rows = _rows(m, N, rank)[1]
        if b.shape != (rows, n):
            raise RuntimeError(f"matrix {i}: local block {tuple(b.shape)} is not the Shard(0) block ({rows}, {n})")
        padded = b.new_zeros(-(-m // N), n, dtype=comm_dtype)
        padded[:rows] = b
        send_parts[owners[i]].append(padded.reshape(-1))
    mine = [i for i in range(len(shapes)) if owners[i] == rank]
    per_sender = sum(chunk[i] for i in mine)
    in_splits = [sum(chunk[i] for i in range(len(shapes)) if owners[i] == j) for j in range(N)]
    device = blocks[0].device if blocks else torch.device("cpu")
    send = torch.cat([p for parts in send_parts for p in parts]) if blocks else torch.zeros(0, device=device)
    recv = torch.empty(N * per_sender, dtype=comm_dtype, device=device)
    dist.all_to_all_single(recv, send.to(comm_dtype), output_split_sizes=[per_sender] * N,
                           input_split_sizes=in_splits, group=group)

    # Whole matrices on this owner, orthogonalised one shape at a time.
    recv = recv.reshape(N, per_sender)
    whole, off = {}, 0
    for i in mine:
        m, n = shapes[i]
        whole[i] = recv[:, off:off + chunk[i]].reshape(N * -(-m // N), n)[:m]
        off += chunk[i]
    result = {}
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i in mine:
        by_shape.setdefault(shapes[i], []).append(i)
    for ids in by_shape.values():
        out = orthogonalize(torch.stack([whole[i] for i in ids]))
        for i, o in zip(ids, out.unbind(0)):
            result[i] = o
    back = torch.empty(N, per_sender, dtype=comm_dtype, device=device)
    off = 0
    for i in mine:
        m, n = shapes[i]
        c = -(-m // N)
        padded = result[i].new_zeros(N * c, n, dtype=comm_dtype)
        padded[:m] = result[i]
        back[:, off:off + chunk[i]] = padded.reshape(N, c * n)
        off += chunk[i]
    out_flat = torch.empty(sum(in_splits), dtype=comm_dtype, device=device)
    dist.all_to_all_single(out_flat, back.reshape(-1), output_split_sizes=in_splits,
                           input_split_sizes=[per_sender] * N, group=group)
    # Unpack: the results from owner j arrive in the order of j's matrices.
    pieces, off = {}, 0
    for j in range(N):
        for i in range(len(shapes)):
            if owners[i] == j:
                pieces[i] = out_flat[off:off + chunk[i]]
                off += chunk[i]
    updates = []
    for i, (m, n) in enumerate(shapes):
        rows = _rows(m, N, rank)[1]
        updates.append(pieces[i].reshape(-1, n)[:rows])
    return updates


def bytes_of(tensors) -> int:
    """Bytes of the local parts of ``tensors`` (plain tensors whole, DTensors their shard)."""
    total = 0
    for t in tensors:
        lt = local(t)
        total += lt.numel() * lt.element_size()
    return total


__all__ = ["PARALLEL_MODES", "REDUCE_MODES", "assign_owners", "build_mesh", "bytes_of", "ddp_ordered_hook", "full",
           "is_dtensor", "local", "mixed_precision", "ns_cost", "ordered_all_reduce_",
           "ordered_reduce_scatter", "orthogonalize_sharded", "resolve_reduce", "shard_group", "shard_model",
           "tree_sum", "use_ordered_reduction"]


# ---------------------------------------------------------------------------------------------------------
# Muon on sharded parameters.

def _sharded_muon_class():
    from .optim import Muon, adam_update_, muon_momentum_, newton_schulz_batched

    class ShardedMuon(Muon):
        """``pmf.optim.Muon`` on FSDP2 / HSDP parameters: the same maths (its elementwise pieces
        ``muon_momentum_`` and ``adam_update_`` run on the local shards) and the same state (step counts,
        momentum, Adam moments; the tensors are DTensors sharded like their parameters, so a checkpoint
        resumes under any layout). Each Muon matrix is orthogonalised whole by one owner rank of its shard
        group (``orthogonalize_sharded``), same-shape matrices stacked as in the batched single-process step."""

        group = None  # the shard group's process group

        @classmethod
        def adopt(cls, opt: Muon, group) -> ShardedMuon:
            new = cls.__new__(cls)
            new.__dict__.update(opt.__dict__)
            new.group = group
            return new

        def _orthogonalize(self, group: dict, params: list[torch.Tensor], nesterov: list[torch.Tensor]):
            steps, dtype, k = group["ns_steps"], self.ns_dtype, self.max_stack

            def ns(stack: torch.Tensor) -> torch.Tensor:  # at most max_stack matrices per call, as Muon
                return torch.cat([newton_schulz_batched(stack[i:i + k], steps, dtype=dtype)
                                  for i in range(0, stack.shape[0], k)])

            return orthogonalize_sharded(nesterov, [tuple(p.shape) for p in params], self.group, ns)

        def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
            lr = group["lr"]
            states, ts = self._next_steps(params, "momentum")
            ps = [local(p) for p in params]
            nesterov = muon_momentum_(ps, [local(p.grad) for p in params], [local(s["momentum"]) for s in states],
                                      ts, lr=lr, wd=group["weight_decay"], beta=group["momentum"])
            for p, pl, u in zip(params, ps, self._orthogonalize(group, params, nesterov)):
                out, inp = p.shape  # the whole matrix's shape
                pl.add_(u.to(pl.dtype), alpha=-lr * math.sqrt(max(1.0, out / inp)))

        def _adam_step(self, group: dict, params: list[torch.Tensor]) -> None:
            states, ts = self._next_steps(params, "exp_avg", "exp_avg_sq")
            adam_update_([local(p) for p in params], [local(p.grad) for p in params],
                         [local(s["exp_avg"]) for s in states], [local(s["exp_avg_sq"]) for s in states], ts,
                         lr=group["lr"], wd=group["weight_decay"], eps=group["eps"], betas=group["betas"])

        _muon_foreach = _muon_single = _muon_step
        _adam_foreach = _adam_single = _adam_step
        collective_muon = True  # every rank of a shard group takes part in every exchange

    return ShardedMuon


def build_sharded_optimizer(model: torch.nn.Module, cfg, mesh) -> torch.optim.Optimizer:
    """``pmf.optim.build_optimizer`` on a sharded model: Muon becomes its sharded form over the mesh's shard
    group; AdamW (the ablation) is elementwise and runs on DTensors as it is."""
    from .optim import Muon, build_optimizer

    opt = build_optimizer(model, cfg)
    if isinstance(opt, Muon):
        opt = _sharded_muon_class().adopt(opt, shard_group(mesh))
    return opt
