"""Building and resuming a training run, in the order every rank takes the same collective steps: the model and
its sharding, the optimiser and the EMAs (``build``), their state from the checkpoint to resume
(``resolve_resume``, ``load_resume``, ``restore``), then compilation, the DDP wrapper and the gradient reduction
(``parallelize``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .. import parallel as P
from ..checkpoints.load import is_training_checkpoint, latest_checkpoint, read_file, run_checkpoint
from ..checkpoints.schema import TrainingCheckpoint
from ..checkpoints.sharded import read_meta
from ..class_choice import fitting_names
from ..errors import PMFError
from ..extras import needs
from ..folder_layout import RESUME_AUTO, RunFolder, resume_given
from ..model_configs import ModelConfig
from ..nn.model import PMFDiT
from ..parallel import process as D
from .config import TrainConfig
from .ema import EMASet, ema_schedules
from .optim import build_optimizer
from .state import restore_file, restore_folder


@dataclass
class Parts:
    """What one rank trains: ``model`` (sharded in place under FSDP2 / HSDP) and ``net``, what the loss calls
    with gradients (the DDP wrapper of ``model`` across processes, else ``model``)."""

    model: PMFDiT
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    emas: EMASet
    sharded: bool  # FSDP2 / HSDP: parameters, gradients, optimiser state and EMAs are DTensors
    bf16: bool  # bf16 autocast (GPU only)


def data_class_names(data, mcfg: ModelConfig) -> list[str] | None:
    """The training data's class names (an image folder's class folders), where they name the model's classes."""
    names = getattr(data, "class_names", None)
    return fitting_names(names, mcfg.num_classes)


def build(cfg: TrainConfig, mcfg: ModelConfig, info: D.DistInfo, class_names: list[str] | None = None, *,
          resuming: bool = False) -> Parts:
    """The model (identical initial weights on every rank: one seed; a new run with ``cfg.init`` starts from
    those weights, adapted by ``pmf.training.finetune``), sharded when ``cfg.parallel`` asks, its optimiser and its EMAs
    (copies of the initial weights)."""
    device = info.device
    bf16 = cfg.precision == "bf16" and device.type == "cuda"
    if cfg.precision == "bf16" and device.type != "cuda":
        D.print0("precision bf16 applies on GPU only; training in fp32", info=info)
    torch.manual_seed(cfg.seed)
    # the value checks' host syncs cost a GPU step; activation checkpointing is the network's construction option
    model = PMFDiT(mcfg, check_values=device.type == "cpu", activation_checkpointing=cfg.grad_checkpointing)
    if cfg.init and not resuming:  # a resumed run has its own weights
        from .finetune import init_weights

        D.print0(init_weights(model, cfg, class_names), info=info, file=sys.stderr)
    if cfg.objective == "fd":
        from ..posttrain.fd_objective import freeze_v_head

        freeze_v_head(model)
    model = model.to(device)
    sharded = cfg.parallel != "ddp"
    if sharded:
        mesh = P.build_mesh(cfg.parallel, device, cfg.shard_size)
        P.shard_model(model, mesh, bf16=bf16)
        optimizer = P.build_sharded_optimizer(model, cfg.optim, mesh)
    else:
        optimizer = build_optimizer(model, cfg.optim)
    return Parts(model, model, optimizer, EMASet(model, cfg.ema, cfg.batch_size), sharded, bf16)


def resolve_resume(resume: str | None, ckpt_dir: Path) -> Path | None:
    if not resume_given(resume):
        return None
    if resume == RESUME_AUTO:
        return latest_checkpoint(ckpt_dir)
    path = Path(resume)
    return run_checkpoint(path) if path.is_dir() else path


def load_resume(path: Path, mcfg: ModelConfig, cfg: TrainConfig) -> TrainingCheckpoint:
    """Read a training checkpoint and check that it fits this run (same architecture and batch size, every EMA of
    the run). A sharded (DCP) folder gives its meta (``sharded`` set); its tensors are read once the model is
    built."""
    if path.is_dir():
        obj = TrainingCheckpoint.from_meta(read_meta(path))
    else:
        raw = read_file(path)
        obj = TrainingCheckpoint.from_payload(raw) if is_training_checkpoint(raw) else None
    if obj is None or not obj.resumable:
        raise PMFError(f"{str(path)!r} is not a resumable training checkpoint (no optimiser state)")
    saved = obj.model_config
    diff = {k: (saved.get(k), v) for k, v in mcfg.to_dict().items() if saved.get(k) != v}
    if diff:
        text = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise PMFError(f"cannot resume from {str(path)!r}: it was trained with another architecture ({text})")
    saved_batch = obj.train_config.get("batch_size")
    if saved_batch is not None and saved_batch != cfg.batch_size:
        raise PMFError(f"cannot resume from {str(path)!r} with batch size {cfg.batch_size}: it was trained with "
                       f"{saved_batch} (the data order and the EMA schedule depend on it)")
    saved_emas = obj.ema_names if obj.emas is not None else None  # a file's EMAs, or a folder's meta's names
    run_emas = list(ema_schedules(cfg.ema))
    if saved_emas is not None and not set(run_emas) <= set(saved_emas):
        own = RunFolder.of_checkpoint(path).config
        hint = f"--config {own}" if own.is_file() else "the settings it was trained with"
        raise PMFError(f"cannot resume from {str(path)!r}: it keeps other EMAs ({', '.join(saved_emas)}) than this "
                       f"run ({', '.join(run_emas)}); resume with {hint}, or train into another --out")
    return obj


def restore(parts: Parts, path: Path, state: TrainingCheckpoint) -> int:
    """Fill model, optimiser and EMAs from a checkpoint read by ``load_resume`` (a single file, or the meta of a
    sharded folder); any layout resumes into any other (``pmf.training.state``). Returns the step it was saved at."""
    if state.sharded:
        restore_folder(path, parts.model, parts.optimizer, parts.emas)
    else:
        restore_file(state, parts.model, parts.optimizer, parts.emas)
    return int(state.step)


def parallelize(parts: Parts, cfg: TrainConfig, info: D.DistInfo) -> None:
    """After the state is in place: the Triton check, ``torch.compile``, the DDP wrapper and the ordered
    gradient reduction (``--reduce``)."""
    device = info.device
    if cfg.loss.tangent_attention == "triton":
        from ..nn.triton_attention import triton_available

        if not triton_available(torch.empty(0, device=device)):
            raise PMFError(f"loss.tangent_attention 'triton' needs the triton package and a CUDA device (training "
                           f"on {device}); use 'math'")
    if cfg.compile:
        parts.model.compile()
    ordered = info.world_size > 1 and P.resolve_reduce(cfg.reduce, dist.get_backend()) == "ordered"
    if parts.sharded and ordered:
        P.use_ordered_reduction(parts.model)
    parts.net = parts.model if parts.sharded else D.wrap_ddp(parts.model, info, ordered=ordered)


def build_perceptual_loss(cfg: TrainConfig, device):
    """The optional perceptual term (imported lazily: the core trains without the extras)."""
    if cfg.perceptual is None or not cfg.perceptual.enabled:
        return None
    with needs("perceptual", "perceptual losses need lpips and timm"):
        from ..perceptual import build_perceptual
    return build_perceptual(cfg.perceptual, device)
