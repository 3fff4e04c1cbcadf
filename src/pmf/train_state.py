"""The training state of a run as one flat dictionary whose keys do not depend on the layout (plain, DDP or
FSDP2 / HSDP), and the conversions between it and the two checkpoint forms: the single file of a plain or DDP
run and the sharded DCP folder (``pmf.sharded_checkpoint``). Keys:

- ``model/<name>``: the raw weights; ``ema/<ema>/<name>``: every EMA;
- ``optim/<parameter name>/<state key>``: the optimiser state (Muon momentum, Adam moments and step counts).

Trainer side: reading a model from a checkpoint needs none of this (``pmf.checkpoint``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint_files import FORMAT, save_atomic
from .errors import CheckpointError
from .sharded_checkpoint import dcp_load, read_meta, stored_tensors


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


def load_sharded(path: str | os.PathLike, model, optimizer, emas) -> dict:
    """Fill model, optimiser and EMAs from a DCP checkpoint (any layout into this run's layout); returns the meta."""
    meta = read_meta(path)
    check_rule(optimizer, [meta.get("optimizer_rule")])
    ensure_optimizer_state(optimizer, model, stored_tensors(path))
    state = train_state(model, optimizer, emas)
    dcp_load(state, path, no_dist=not dist.is_initialized())
    return meta


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
    dcp_load(train_state(model, optimizer, emas), path, no_dist=True)
    payload = dict(format=FORMAT, step=meta["step"], model_config=meta["model_config"],
                   model={k: v.detach().clone() for k, v in model.state_dict().items()}, ema=emas.state_dict(),
                   optimizer=optimizer.state_dict(), train_config=meta["train_config"],
                   world_size=meta.get("world_size"))
    return save_atomic(payload, out)
