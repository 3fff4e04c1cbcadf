"""Sharded training checkpoints through ``torch.distributed.checkpoint`` (DCP).

A checkpoint is a folder ``OUT/checkpoints/step_XXXXXXXX/`` holding DCP's files (each rank writes its own
shards, ``.metadata`` describes them) and ``meta.json`` (format, step, model and training configs, the EMA
names, the world size and parallel mode that wrote it). The state is one flat dictionary whose keys do not
depend on the layout:

- ``model/<name>``: the raw weights; ``ema/<ema>/<name>``: every EMA;
- ``optim/<parameter name>/<state key>``: the optimiser state (Muon momentum, Adam moments and step counts).

Under FSDP2 / HSDP the tensors are DTensors and each rank writes and reads its shards; under DDP or in one
process they are plain tensors. DCP reshards on load, so a checkpoint resumes under another world size and
another ``--parallel`` mode.

Atomicity: every rank writes into ``.step_XXXXXXXX.tmp/``; after all ranks finished (a barrier) rank 0 writes
``meta.json`` and renames the folder to ``step_XXXXXXXX`` (an atomic rename). An interrupted save leaves only
the hidden temporary folder, which ``list_checkpoints`` ignores and the next save of that step replaces."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import FORMAT, checkpoint_path, fsync_dir, list_checkpoints, save_atomic
from .distributed import barrier, rank_world
from .errors import CheckpointError

META = "meta.json"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / ".metadata").is_file() and (path / META).is_file()


def read_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not is_sharded_checkpoint(path):
        raise CheckpointError(f"{str(path)!r} is not a sharded checkpoint folder (no .metadata or {META})")
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{str(path / META)!r} is not readable ({err})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a {FORMAT} checkpoint")
    return meta


def stored_tensors(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of every tensor of a DCP checkpoint, by key."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(str(path)).read_metadata()
    return {k: (tuple(v.size), v.properties.dtype) for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


def _param_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def ensure_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                           stored: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """Create (zero) the optimiser state entries named in ``stored`` that a fresh optimiser does not hold yet:
    tensors of the parameter's shape like the parameter (sharded like it), others as plain tensors."""
    params = {n: p for n, p in model.named_parameters()}
    for key, (shape, dtype) in stored.items():
        if not key.startswith("optim/"):
            continue
        name, sk = key[len("optim/"):].rsplit("/", 1)
        p = params.get(name)
        if p is None or sk in optimizer.state[p]:
            continue
        if shape == tuple(p.shape):
            optimizer.state[p][sk] = torch.zeros_like(p, dtype=dtype)
        else:
            optimizer.state[p][sk] = torch.zeros(shape, dtype=dtype, device=p.device if shape else "cpu")


def train_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, emas) -> dict[str, torch.Tensor]:
    """The flat, layout-independent state (keys in the module docstring); the values are the live tensors."""
    state = {f"model/{k}": v for k, v in model.state_dict().items()}
    for name, weights in emas.weights.items():
        state.update({f"ema/{name}/{k}": v for k, v in weights.items()})
    names = _param_names(model)
    for group in optimizer.param_groups:
        for p in group["params"]:
            for sk, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v):
                    state[f"optim/{names[id(p)]}/{sk}"] = v
    return state


def optimizer_rule(optimizer: torch.optim.Optimizer) -> str | None:
    """The update rule recorded in the optimiser's groups (``pmf.optim.RULE`` for Muon), None for others."""
    rules = {g.get("rule") for g in optimizer.param_groups}
    return rules.pop() if len(rules) == 1 else None


def check_rule(optimizer: torch.optim.Optimizer, saved_rules: list) -> None:
    """Refuse optimiser state saved under another Muon rule (``pmf.optim.Muon.load_state_dict``'s check)."""
    from .optim import Muon

    if isinstance(optimizer, Muon) and set(saved_rules) != {optimizer_rule(optimizer)}:
        optimizer.load_state_dict({"param_groups": [{"rule": r} for r in saved_rules], "state": {}})  # raises


def file_state(obj: dict, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The flat state of a single-file training checkpoint (``step_XXXXXXXX.pt``)."""
    state = {f"model/{k}": v for k, v in obj["model"].items()}
    for name, weights in (obj.get("ema") or {}).items():
        state.update({f"ema/{name}/{k}": v for k, v in weights.items()})
    names = _param_names(model)
    order = [p for group in optimizer.param_groups for p in group["params"]]
    saved = obj["optimizer"]
    check_rule(optimizer, [g.get("rule") for g in saved.get("param_groups", [])])
    index = [i for g in saved["param_groups"] for i in g["params"]]
    if len(index) != len(order):
        raise CheckpointError(f"the checkpoint's optimiser has {len(index)} parameters, this run's {len(order)}")
    for i, p in zip(index, order):
        for sk, v in saved["state"].get(i, saved["state"].get(str(i), {})).items():
            if torch.is_tensor(v):
                state[f"optim/{names[id(p)]}/{sk}"] = v
    return state


@torch.no_grad()
def load_full_into(state: dict[str, torch.Tensor], full: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors ``full`` into the live ``state`` (DTensors receive their local block, no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    missing = sorted(set(state) - set(full))
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} entries, e.g. {missing[:3]}")
    for k, dst in state.items():
        src = full[k]
        if isinstance(dst, DTensor):
            src = src.to(dst.device, dst.dtype)
            piece = distribute_tensor(src, dst.device_mesh, dst.placements, src_data_rank=None)
            dst.to_local().copy_(piece.to_local())
        else:
            dst.copy_(src)


def _dcp_load(state: dict, path, no_dist: bool) -> None:
    """``dcp.load`` in place; in one process without its warning that it assumes one process."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, checkpoint_id=str(path), no_dist=no_dist)


def load_sharded(path: str | os.PathLike, model, optimizer, emas) -> dict:
    """Fill model, optimiser and EMAs from a DCP checkpoint (any layout into this run's layout); returns the meta."""
    meta = read_meta(path)
    check_rule(optimizer, [meta.get("optimizer_rule")])
    ensure_optimizer_state(optimizer, model, stored_tensors(path))
    state = train_state(model, optimizer, emas)
    _dcp_load(state, path, no_dist=not dist.is_initialized())
    return meta


class ShardedSaver:
    """Writes DCP checkpoints atomically; with ``asynchronous`` the write of one checkpoint overlaps training
    and is completed (renamed into place) before the next save or at ``finish``."""

    def __init__(self, directory: Path, keep_last: int, asynchronous: bool = False):
        self.directory, self.keep_last, self.asynchronous = Path(directory), keep_last, asynchronous
        self.pending = None
        # A background save runs its collectives in another thread: they get their own (gloo) group, apart
        # from the training's collectives. Created on every rank (a collective call).
        self.group = dist.new_group(backend="gloo") if asynchronous and dist.is_initialized() else None

    def save(self, step: int, state: dict, meta: dict) -> Path:
        import torch.distributed.checkpoint as dcp

        self.finish()
        final = checkpoint_path(self.directory, step).with_suffix("")
        tmp = final.with_name(f".{final.name}.tmp")
        if rank_world()[0] == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        if self.asynchronous:
            future = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self.group)
            self.pending = (future, tmp, final, meta)
        else:
            dcp.save(state, checkpoint_id=str(tmp))
            self._complete(tmp, final, meta)
        return final

    def finish(self) -> None:
        """Wait for a background save and move it into place."""
        if self.pending is not None:
            future, tmp, final, meta = self.pending
            self.pending = None
            future.result()
            self._complete(tmp, final, meta)

    def _complete(self, tmp: Path, final: Path, meta: dict) -> None:
        barrier()  # every rank's shards are written
        if rank_world()[0] == 0:
            save_atomic(json.dumps({"format": FORMAT, **meta}, indent=2), tmp / META)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.directory)
            for stale in self.directory.glob(".step_*.tmp"):  # left by interrupted saves
                shutil.rmtree(stale, ignore_errors=True)
            for _, old in list_checkpoints(self.directory)[:-self.keep_last]:
                remove_checkpoint(old)
        barrier()


def remove_checkpoint(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)


def read_weights(path: str | os.PathLike, which: str = "raw") -> dict[str, torch.Tensor]:
    """Whole tensors of one weight set (``"raw"`` or an EMA name) of a DCP checkpoint, read in this process
    alone (no process group needed)."""
    prefix = "model/" if which == "raw" else f"ema/{which}/"
    stored = stored_tensors(path)
    sd = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in stored.items() if k.startswith(prefix)}
    if not sd:
        raise CheckpointError(f"weights {which!r} are not in {str(path)!r}")
    _dcp_load(sd, path, no_dist=True)
    return {k[len(prefix):]: v for k, v in sd.items()}


class _Lazy(dict):
    """A dict whose entries listed in ``loaders`` are read on first access."""

    def __init__(self, loaders: dict, **fixed):
        super().__init__(**fixed, **{k: None for k in loaders})
        self._loaders = loaders

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if value is None and key in self._loaders:
            value = self._loaders[key]()
            self[key] = value
        return value


def lazy_checkpoint(path: str | os.PathLike) -> dict:
    """A DCP checkpoint as the dict a single-file training checkpoint reads as (format, model_config,
    train_config, step, ``model`` and ``ema``), each weight set read from disk only when it is looked up."""
    import functools

    meta = read_meta(path)
    emas = _Lazy({n: functools.partial(read_weights, path, n) for n in meta.get("emas") or []})
    return _Lazy({"model": functools.partial(read_weights, path, "raw")}, format=FORMAT, step=meta["step"],
                 model_config=meta["model_config"], train_config=meta["train_config"], ema=emas,
                 class_names=meta.get("class_names"))


def to_single_file(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Rewrite a DCP checkpoint as one ``step_XXXXXXXX.pt``-style training checkpoint (model, EMAs, optimiser
    in ``torch.optim`` layout, step), resumable by a plain or DDP run and readable by ``load_model``."""
    from .config import ModelConfig
    from .ema import EMASet
    from .nn.model import PMFDiT
    from .optim import build_optimizer
    from .train_config import TrainConfig

    meta = read_meta(path)
    cfg = TrainConfig.from_dict(meta["train_config"])
    model = PMFDiT(ModelConfig.from_dict(meta["model_config"]))
    optimizer = build_optimizer(model, cfg.optim)
    emas = EMASet(model, cfg.ema, cfg.batch_size)
    ensure_optimizer_state(optimizer, model, stored_tensors(path))
    _dcp_load(train_state(model, optimizer, emas), path, no_dist=True)
    payload = dict(format=FORMAT, step=meta["step"], model_config=meta["model_config"],
                   model={k: v.detach().clone() for k, v in model.state_dict().items()}, ema=emas.state_dict(),
                   optimizer=optimizer.state_dict(), train_config=meta["train_config"],
                   world_size=meta.get("world_size"))
    return save_atomic(payload, out)
