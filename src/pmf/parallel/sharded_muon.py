"""Muon on row-sharded (FSDP2 / HSDP) parameters. Newton-Schulz needs whole matrices: ``orthogonalize_sharded``
gives each matrix one owner rank in its shard group (greedy balance of the Newton-Schulz cost m n min(m, n)),
sends every rank's row block of each matrix to its owner in one ``all_to_all``, orthogonalises the owner's
matrices there (same-shape matrices stacked into one batched call), and sends the row blocks of the results
back in a second ``all_to_all``. Every other part of the optimiser is elementwise and runs on the local shards
with no communication."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .mesh import local, shard_group


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
    return _unpack(out_flat, shapes, owners, chunk, N, rank)


def _unpack(out_flat: torch.Tensor, shapes, owners, chunk, N: int, rank: int) -> list[torch.Tensor]:
    """This rank's row blocks from the second exchange: the results from owner j arrive in the order of j's
    matrices."""
    pieces, off = {}, 0
    for j in range(N):
        for i in range(len(shapes)):
            if owners[i] == j:
                pieces[i] = out_flat[off:off + chunk[i]]
                off += chunk[i]
    return [pieces[i].reshape(-1, n)[:_rows(m, N, rank)[1]] for i, (m, n) in enumerate(shapes)]


def _sharded_muon_class():
    from ..training.optim import Muon, adam_update_, muon_momentum_, newton_schulz_batched

    class ShardedMuon(Muon):
        """``pmf.training.optim.Muon`` on FSDP2 / HSDP parameters: the same maths (its elementwise pieces
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
    """``pmf.training.optim.build_optimizer`` on a sharded model: Muon becomes its sharded form over the mesh's shard
    group; AdamW (the ablation) is elementwise and runs on DTensors as it is."""
    from ..training.optim import Muon, build_optimizer

    opt = build_optimizer(model, cfg)
    if isinstance(opt, Muon):
        opt = _sharded_muon_class().adopt(opt, shard_group(mesh))
    return opt
