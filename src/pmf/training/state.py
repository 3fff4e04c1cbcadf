"""The training state of a run (model, optimiser, EMAs) in its two checkpoint forms, through PyTorch's
state-dict API (``torch.distributed.checkpoint.state_dict``): ``get_state_dict`` and ``set_state_dict`` give
and take the state of the model and of the optimiser by parameter name, the same for a plain, DDP or FSDP2 /
HSDP model, so that either form resumes under any layout.

- A single file ``step_XXXXXXXX.pt`` (plain and DDP runs; ``file_state``, ``restore_file``): ``model`` (name
  -> tensor), ``optimizer`` (``get_state_dict``'s: ``state`` and ``param_groups`` by parameter name) and
  ``ema`` (EMA -> name -> tensor), whole tensors. Older files hold ``optimizer.state_dict()``, whose integer
  indices count the parameters of the optimiser's groups in order; they are read in that order. The file's
  parameter groups (learning rates, betas, ...) replace the run's, as ``Optimizer.load_state_dict`` does.
- A DCP folder (FSDP2 / HSDP runs, ``pmf.checkpoints.sharded``; ``folder_state``, ``restore_folder``): one flat
  dictionary, ``model/<name>``, ``ema/<ema>/<name>`` and ``optim/<name>/<state key>`` (DTensors under FSDP2 /
  HSDP), read into this run's layout by DCP. It holds no parameter groups: a resumed run keeps its own, and
  ``meta.json`` records the Muon rule for ``pmf.training.optim.check_rule``.

Done here by hand, where the API has nothing: the EMAs (named copies of the model's state dict, neither module
nor optimiser) are flattened here and restored by ``EMASet.load_state_dict`` or, from a folder, by DCP in
place. And ``get_state_dict`` gives an optimiser without state the state of one step with zero gradients and
learning rate 0 (weights unchanged, every step count 1): a checkpoint written before the first step records
no optimiser state (``_state_dicts``), and one restored from it leaves the optimiser without state (``_set``).

Reading a model from a checkpoint needs none of this (``pmf.checkpoints.load``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..checkpoints.schema import TrainingCheckpoint, read_checkpoint, write_checkpoint_file
from ..checkpoints.sharded import dcp_load, read_meta, stored_tensors
from ..errors import CheckpointError
from ..model_configs import ModelConfig
from ..nn.model import PMFDiT
from .config import TrainConfig
from .ema import EMASet
from .optim import build_optimizer, check_rule

WHOLE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # a file's tensors: whole, on the CPU


def optimizer_rule(optimizer: torch.optim.Optimizer) -> str | None:
    """The update rule recorded in the optimiser's groups (``pmf.training.optim.RULE`` for Muon), None for others."""
    rules = {g.get("rule") for g in optimizer.param_groups}
    return rules.pop() if len(rules) == 1 else None


def file_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, emas: EMASet) -> dict:
    """``model``, ``optimizer`` and ``ema`` of a single-file checkpoint of a plain or DDP run (rank 0 calls it
    alone; other ranks would get empty dictionaries)."""
    msd, osd = _state_dicts(model, optimizer, WHOLE)
    return dict(model=msd, optimizer=osd, ema=emas.state_dict())


def folder_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, emas: EMASet) -> dict:
    """The flat state of a DCP folder (keys in the module docstring), the live tensors; under FSDP2 / HSDP every
    rank calls it and saves its shards."""
    msd, osd = _state_dicts(model, optimizer)
    return _flatten(msd, osd, emas.weights)


def restore_file(ckpt: TrainingCheckpoint | dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 emas: EMASet) -> None:
    """Fill model, optimiser and EMAs of any layout from a single-file checkpoint (read by every rank: a DTensor
    receives its block): a ``TrainingCheckpoint``, a file's dictionary, or ``file_state``'s."""
    if isinstance(ckpt, dict) and "format" in ckpt:
        ckpt = read_checkpoint(ckpt)
    weights, saved, ema = (ckpt.model, ckpt.optimizer, ckpt.ema) if isinstance(ckpt, TrainingCheckpoint) else \
        (ckpt["model"], ckpt["optimizer"], ckpt["ema"])  # file_state's
    check_rule(optimizer, [g.get("rule") for g in saved["param_groups"]])
    _set(model, optimizer, weights, _by_name(saved, model, optimizer), StateDictOptions(full_state_dict=True))
    emas.load_state_dict(ema)


def restore_folder(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   emas: EMASet) -> TrainingCheckpoint:
    """Fill model, optimiser and EMAs of any layout from a DCP folder (written under any layout: DCP
    reshards); returns what its meta records."""
    meta = TrainingCheckpoint.from_meta(read_meta(path))
    check_rule(optimizer, [meta.optimizer_rule])
    msd, osd = get_state_dict(model, optimizer)  # the tensors to read into (a fresh optimiser's of a zero step)
    if not any(k.startswith("optim/") for k in stored_tensors(path)):  # written before the first step
        osd = {**osd, "state": {}}
    dcp_load(_flatten(msd, osd, emas.weights), path, no_dist=not dist.is_initialized())  # in place
    _set(model, optimizer, msd, osd)
    return meta


def to_single_file(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Rewrite a DCP folder as one ``step_XXXXXXXX.pt``-style training checkpoint: its state restored into a
    plain model, optimiser and EMAs built from its configs, written as a plain run writes it; resumable under
    any layout and readable by ``load_model``, with the same sidecar (``write_checkpoint_file``)."""
    meta = TrainingCheckpoint.from_meta(read_meta(path))
    cfg = TrainConfig.from_dict(meta.train_config)
    model = PMFDiT(ModelConfig.from_dict(meta.model_config))
    optimizer = build_optimizer(model, cfg.optim)
    emas = EMASet(model, cfg.ema, cfg.batch_size)
    restore_folder(path, model, optimizer, emas)
    ckpt = TrainingCheckpoint(meta.step, meta.model_config, meta.train_config, **file_state(model, optimizer, emas),
                              class_names=meta.class_names, world_size=meta.world_size)
    return write_checkpoint_file(ckpt, out)


def _state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 options: StateDictOptions | None = None) -> tuple[dict, dict]:
    """``get_state_dict`` for saving; an optimiser without state keeps none and records none."""
    fresh = not optimizer.state
    msd, osd = get_state_dict(model, optimizer, options=options)
    if fresh:
        optimizer.state.clear()
        osd = {**osd, "state": {}}
    return msd, osd


def _set(model: torch.nn.Module, optimizer: torch.optim.Optimizer, msd: dict, osd: dict,
         options: StateDictOptions | None = None) -> None:
    """``set_state_dict``; without optimiser state in ``osd`` the optimiser is left without state."""
    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd, options=options)
    if not osd["state"]:
        optimizer.state.clear()


def _flatten(msd: dict, osd: dict, emas: dict) -> dict:
    flat = {f"model/{k}": v for k, v in msd.items()}
    for name, weights in emas.items():
        flat.update({f"ema/{name}/{k}": v for k, v in weights.items()})
    for param, state in osd["state"].items():
        flat.update({f"optim/{param}/{k}": v for k, v in state.items()})
    return flat


def _by_name(saved: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """An optimiser state dict by parameter name; an older file's integer indices name the parameters of this
    optimiser's groups in order (``Optimizer.load_state_dict``'s reading)."""
    index = [i for g in saved["param_groups"] for i in g["params"]]
    if not all(isinstance(i, int) for i in index):
        return saved
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    if len(index) != len(order):
        raise CheckpointError(f"the checkpoint's optimiser has {len(index)} parameters, this run's {len(order)}")
    name = dict(zip(index, order))
    return {"state": {name[i]: s for i, s in saved["state"].items()},
            "param_groups": [{**g, "params": [name[i] for i in g["params"]]} for g in saved["param_groups"]]}
