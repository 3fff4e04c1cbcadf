"""Sharded and data-parallel training helpers, by concern: ``mesh`` (meshes, FSDP2 / HSDP sharding, local and
whole tensors), ``reduction`` (gradient averaging in one summation order for every layout) and ``sharded_muon``
(Muon's Newton-Schulz on row-sharded matrices by owner ranks)."""

from ..choices import PARALLEL_MODES, REDUCE_MODES
from .mesh import (
    build_mesh,
    bytes_of,
    full,
    is_dtensor,
    local,
    local_world_size,
    mixed_precision,
    shard_group,
    shard_model,
)
from .reduction import (
    ddp_ordered_hook,
    ordered_all_reduce_,
    ordered_reduce_scatter,
    ordered_reduce_scatter_,
    resolve_reduce,
    tree_sum,
    use_ordered_reduction,
)
from .sharded_muon import _rows, assign_owners, build_sharded_optimizer, ns_cost, orthogonalize_sharded

__all__ = ["PARALLEL_MODES", "REDUCE_MODES", "_rows", "assign_owners", "build_mesh", "build_sharded_optimizer",
           "bytes_of", "ddp_ordered_hook", "full", "is_dtensor", "local", "local_world_size", "mixed_precision",
           "ns_cost", "ordered_all_reduce_", "ordered_reduce_scatter", "ordered_reduce_scatter_",
           "orthogonalize_sharded", "resolve_reduce", "shard_group", "shard_model", "tree_sum",
           "use_ordered_reduction"]
