"""Export of the one-step generator (spec section 4 with N = 1: one u-head pass) as a ``torch.export``
program that runs without this package: (unit noise, labels, omega, t_min, t_max) -> images in [-1, 1]."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..nn.model import PMFDiT, u_head_only
from ..sampling import flow_map_step, time_grid, u_head
from ..sampling_setting import check_prediction, check_steps


class OneStepGenerator(nn.Module):
    """images = z - u(z, h = 1, omega, t_min, t_max, y) with z = noise_scale * eps (t = 1, r = 0);
    eps [B, C, H, W] standard normal, labels [B] int64, omega / t_min / t_max [B]. u-head only.
    ``steps`` > 1 unrolls ``pmf.sampling.sample``'s N-step loop (spec section 4) into the same graph.
    ``attention_layout``: that of the copied network (``PMFDiT``); the ONNX export's is "tokens". While it is
    exported the network skips its value checks by itself (data-dependent control flow); shapes stay checked."""

    def __init__(self, model: PMFDiT, noise_scale: float | None = None, steps: int = 1, prediction: str = "x",
                 attention_layout: str = "heads"):
        super().__init__()
        check_steps(steps)
        check_prediction(prediction)
        self.net = u_head_only(model, attention_layout=attention_layout)
        cfg = self.net.config
        self.net.eval().requires_grad_(False)
        self.noise_scale = float(cfg.noise_scale if noise_scale is None else noise_scale)
        self.steps, self.prediction = steps, prediction
        self.grid = time_grid(steps)  # Python floats: constants of the graph

    def forward(self, eps: torch.Tensor, labels: torch.Tensor, omega: torch.Tensor, t_min: torch.Tensor,
                t_max: torch.Tensor) -> torch.Tensor:
        z, denoise = self.noise_scale * eps, u_head(self.net)  # (B, C, H, W)
        for i in range(self.steps):
            t, r = (torch.full_like(omega, v) for v in self.grid[i:i + 2])  # (B,); one step: t = 1, r = 0
            z = flow_map_step(denoise, z, t, r, omega, t_min, t_max, labels, self.prediction)
        return z  # (B, C, H, W)


def example_inputs(config, batch: int = 2, device=None) -> tuple[torch.Tensor, ...]:
    """Inputs of the generator's signature (batch >= 2, so that the batch dimension is traced as dynamic)."""
    eps = torch.randn(batch, config.in_channels, config.input_size, config.input_size, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    full = [torch.full((batch,), v, device=device) for v in (1.0, 0.0, 1.0)]
    return (eps, labels, *full)


def export_generator(model: PMFDiT, *, noise_scale: float | None = None, batch: int = 2,
                     dynamic_batch: bool = True, prediction: str = "x") -> torch.export.ExportedProgram:
    """The one-step generator of ``model`` (of ``prediction`` type, the checkpoint's setting says which) as a
    ``torch.export`` program (dynamic batch size by default)."""
    gen = OneStepGenerator(model, noise_scale, prediction=prediction)
    device = next(gen.parameters()).device
    args = example_inputs(gen.net.config, max(batch, 2), device)
    dynamic = None
    if dynamic_batch:
        b = torch.export.Dim("batch", min=1, max=1 << 16)
        dynamic = ({0: b}, {0: b}, {0: b}, {0: b}, {0: b})
    with torch.no_grad():
        return torch.export.export(gen, args, dynamic_shapes=dynamic)


def save_generator(program: torch.export.ExportedProgram, path: str | os.PathLike) -> None:
    """Write a ``.pt2`` file; load it with ``torch.export.load(path).module()``."""
    torch.export.save(program, str(path))
