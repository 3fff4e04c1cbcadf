"""Exponential moving averages of the weights, several side by side (spec section 6): EDM-style half-lives
in kimg with ramp-up, and constant decays. Each EMA is a full state dict, so it can be saved, exported and
sampled like the raw weights."""

from __future__ import annotations

import torch

from ..sampling_setting import ema_name
from .config import EMAConfig


def edm_beta(step: int, batch: int, halflife_kimg: float, rampup: float = 0.05) -> float:
    """beta = 0.5 ** (batch / max(halflife_img, 1e-8)), halflife_img = min(halflife_kimg * 1000,
    step * batch * rampup) (spec section 6); ``step`` counts the updates done, this one included."""
    halflife_img = min(halflife_kimg * 1000.0, step * batch * rampup)
    return 0.5 ** (batch / max(halflife_img, 1e-8))


def ema_schedules(cfg: EMAConfig) -> dict[str, tuple[str, float]]:
    """The EMAs ``cfg`` keeps: name -> (kind, value), half-lives first, in the config's order."""
    schedules = {ema_name("halflife", h): ("halflife", h) for h in cfg.halflives_kimg}
    schedules.update({ema_name("decay", d): ("decay", d) for d in cfg.decays})
    return schedules


class EMASet:
    """Named EMAs of one model's floating-point state (parameters and buffers), initialised from the
    model's current (already synchronised) weights."""

    def __init__(self, model: torch.nn.Module, cfg: EMAConfig, batch_size: int):
        self.cfg, self.batch_size = cfg, batch_size
        self.schedules = ema_schedules(cfg)
        state = model.state_dict()
        self.weights = {name: {k: v.detach().clone() for k, v in state.items()} for name in self.schedules}

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def beta(self, name: str, step: int) -> float:
        kind, value = self.schedules[name]
        if kind == "decay":
            return value
        return edm_beta(step, self.batch_size, value, self.cfg.rampup)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """ema <- beta ema + (1 - beta) weights, after optimiser update number ``step`` (1-based)."""
        state = model.state_dict()
        for name, ema in self.weights.items():
            beta = self.beta(name, step)
            for k, v in state.items():
                if v.is_floating_point():
                    ema[k].lerp_(v.detach(), 1.0 - beta)
                else:
                    ema[k].copy_(v)

    def state_dict(self) -> dict:
        return {name: {k: v.detach().cpu() for k, v in w.items()} for name, w in self.weights.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Copy the whole tensors of ``state`` (``state_dict``'s form) into the EMAs; a sharded EMA (DTensor)
        takes its block of each, with no communication."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        missing = sorted(set(self.weights) - set(state))
        if missing:
            raise KeyError(f"EMAs {missing} missing from the checkpoint (it has {sorted(state)})")
        for name, w in self.weights.items():
            for k, v in w.items():
                src = state[name][k]
                if isinstance(v, DTensor):
                    src = distribute_tensor(src.to(v.device, v.dtype), v.device_mesh, v.placements, src_data_rank=None)
                v.copy_(src)
