"""One training step of the pMF loss (spec sections 3 and 6): the loss draws of (seed, step, rank), the learning
rate, the micro-batches with their backward passes (``pmf.training.accumulate``), gradient clipping, the optimiser
step and the EMAs. ``pmf.training.loop`` runs it once per step."""

from __future__ import annotations

import contextlib

import torch

from .. import parallel as P
from ..model_configs import ModelConfig
from ..nn.attention import tangent_attention
from ..objective import pmf_loss, sample_draws
from ..parallel import process as D
from ..seeds import LOSS, derive_seed
from . import accumulate as A
from .build import Parts
from .config import TrainConfig
from .optim import lr_factor, set_lr


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for the loss draws of (step, rank), independent of everything else."""
    return derive_seed(seed, step, rank, stream=LOSS)


def train_step(parts: Parts, cfg: TrainConfig, mcfg: ModelConfig, step: int, rank: int, x: torch.Tensor,
               y: torch.Tensor, perceptual=None) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """One optimiser step on the batch (x, y) with the loss draws of (seed, step, rank), in ``cfg.grad_accum``
    micro-batches (``pmf.training.accumulate``). Returns the loss, the metrics (detached scalars) and the learning
    rate. A non-finite loss returns before the update."""
    L = cfg.loss
    gen = torch.Generator(x.device).manual_seed(step_seed(cfg.seed, step, rank))
    draws = sample_draws(x, P_mean=L.P_mean, P_std=L.P_std, data_proportion=L.data_proportion, cfg_max=L.cfg_max,
                         cfg_beta=L.cfg_beta, class_dropout_prob=L.class_dropout_prob, noise_scale=mcfg.noise_scale,
                         tr_uniform=L.tr_uniform, generator=gen, class_dropout=L.class_dropout)
    lr = set_lr(parts.optimizer, lr_factor(step, cfg.optim, cfg.steps))
    if hasattr(perceptual, "manual_seed"):  # the random crops follow the same per-(step, rank) seed
        perceptual.manual_seed(step_seed(cfg.seed + 1, step, rank))
    slices = A.micro_slices(x.shape[0], cfg.grad_accum)
    parts.optimizer.zero_grad(set_to_none=True)
    micro = []
    for i, (rows, term) in enumerate(zip(slices, A.perceptual_parts(perceptual, x, slices))):
        with A.gradient_sync(parts.net, parts.model, sync=i == len(slices) - 1):
            loss, metrics = micro_step(parts, cfg, mcfg, x[rows], y[rows], A.slice_draws(draws, rows), term,
                                       share=1 / len(slices))
        if not metrics:
            return loss, {}, lr
        micro.append(metrics)
    metrics = A.merge_metrics(micro)
    if cfg.optim.grad_clip is not None:
        metrics["grad_norm"] = P.full(torch.nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.optim.grad_clip))
    parts.optimizer.step()
    parts.emas.update(parts.model, step + 1)
    return metrics["loss"], metrics, lr


def micro_step(parts: Parts, cfg: TrainConfig, mcfg: ModelConfig, x: torch.Tensor, y: torch.Tensor, draws,
               perceptual, share: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The pMF loss of one micro-batch (``share`` of the batch) and its backward pass, which adds its gradients
    to the parameters'. Returns the loss and its metrics; ({} before any backward) for a non-finite loss."""
    L = cfg.loss
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if parts.bf16 else contextlib.nullcontext()
    with autocast, tangent_attention(L.tangent_attention):
        res = pmf_loss(parts.net, x, y, draws, num_classes=mcfg.num_classes, norm_p=L.norm_p, norm_eps=L.norm_eps,
                       prediction=L.prediction, perceptual=perceptual, no_grad_net=parts.model,
                       **({"jvp": L.jvp} if L.jvp else {}))
    loss = res.loss
    if D.all_reduce_max((~torch.isfinite(loss.detach())).float()).item() > 0:
        return loss, {}
    (loss * share if share != 1 else loss).backward()
    metrics = {"loss": loss.detach() * share, "loss_u": res.loss_u,
               "loss_v": res.loss_v if res.loss_v is not None else loss.new_zeros(())}
    metrics.update({k: v.detach() for k, v in res.logs.items() if torch.is_tensor(v) and v.dim() == 0})
    return loss, metrics
