"""Processes, sharding and data-parallel training, by concern: ``process`` (the process group, degrading to one
process: ranks, barriers, gathers), ``mesh`` (meshes, FSDP2 / HSDP sharding, local and whole tensors),
``reduction`` (gradient averaging in one summation order for every layout) and ``sharded_muon`` (Muon's
Newton-Schulz on row-sharded matrices by owner ranks).

The names below are loaded on first use (PEP 562), so ``pmf.parallel.process`` (which checkpoint reading and
evaluation use) costs no sharding code and no optimiser."""

from __future__ import annotations

from .. import lazy_names
from ..vocabulary import PARALLEL_MODES as PARALLEL_MODES
from ..vocabulary import REDUCE_MODES as REDUCE_MODES

_NAMES = {  # public name -> the submodule that defines it
    "build_mesh": "mesh", "bytes_of": "mesh", "full": "mesh", "is_dtensor": "mesh", "local": "mesh",
    "local_world_size": "process", "mixed_precision": "mesh", "shard_group": "mesh", "shard_model": "mesh",
    "ddp_ordered_hook": "reduction", "ordered_all_reduce_": "reduction", "ordered_reduce_scatter": "reduction",
    "ordered_reduce_scatter_": "reduction", "resolve_reduce": "reduction", "tree_sum": "reduction",
    "use_ordered_reduction": "reduction",
    "_rows": "sharded_muon", "assign_owners": "sharded_muon", "build_sharded_optimizer": "sharded_muon",
    "ns_cost": "sharded_muon", "orthogonalize_sharded": "sharded_muon",
}
__all__ = sorted({"PARALLEL_MODES", "REDUCE_MODES", *_NAMES})


__getattr__, __dir__ = lazy_names(__name__, _NAMES)
