"""Meshes and sharding: FSDP2 (``torch.distributed.fsdp.fully_shard``) over a 1-D mesh of all ranks, or HSDP over a
2-D (replicate x shard) mesh.

Layout. ``fully_shard`` is applied to every transformer ``Block`` and then to the root ``PMFDiT``; each
parameter becomes a DTensor sharded row-wise (``Shard(0)``, torch.chunk sizes) over the mesh's ``shard``
dimension (and replicated over ``replicate`` under HSDP). Gradients come out of backward already averaged
(reduce-scatter inside a shard group, all-reduce across replicas), the same average DDP computes."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..errors import PMFError
from ..vocabulary import PARALLEL_MODES
from .process import local_world_size


def is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view sharing its storage), a plain tensor unchanged."""
    return t.to_local() if is_dtensor(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective over the DTensor's mesh: every rank must call it), a plain tensor unchanged."""
    return t.full_tensor() if is_dtensor(t) else t


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

    from ..nn.layers import Block

    block_mp, root_mp = mixed_precision(bf16)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh, mp_policy=block_mp)
    fully_shard(model, mesh=mesh, mp_policy=root_mp)
    return model


def bytes_of(tensors) -> int:
    """Bytes of the local parts of ``tensors`` (plain tensors whole, DTensors their shard)."""
    total = 0
    for t in tensors:
        lt = local(t)
        total += lt.numel() * lt.element_size()
    return total
