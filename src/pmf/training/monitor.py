"""What a training run shows while it runs: the metrics file (and TensorBoard), the one-line header, the
sample grids of fixed noises, and the bytes of state each process holds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .. import parallel as P
from ..data.order import data_size
from ..folder_layout import RunFolder
from ..images import save_grid
from ..model_configs import ModelConfig
from ..nn.model import PMFDiT, count_parameters
from ..sampling import image_noise, sample, to_uint8
from .config import TrainConfig
from .ema import EMASet


class MetricsLog:
    """Appends one JSON line per logged step (rank 0); on resume drops lines after the resumed step."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional: pip install 'pixel-meanflow[tensorboard]'
            return
        self.tb = SummaryWriter(str(RunFolder(path.parent).tensorboard))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])


def run_header(cfg: TrainConfig, model: torch.nn.Module, data, device, start: int) -> str:
    """One line before the first step: model, parameters, data, device, precision, steps."""
    params = count_parameters(model)  # whole tensors, also for sharded DTensors
    classes = len(getattr(data, "class_names", []) or []) or model.config.num_classes
    precision = cfg.precision if device.type == "cuda" else "fp32"
    steps = f"steps {start} -> {cfg.steps}" if start else f"{cfg.steps} steps"
    return (f"training {cfg.arch} ({params / 1e6:.2f}M parameters, {model.config.input_size}px) on {cfg.data} "
            f"({data_size(data):,} images, {classes} {'class' if classes == 1 else 'classes'}) | {device}, "
            f"{precision} | {steps}, "
            f"batch {cfg.batch_size}")


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, emas: EMASet) -> dict:
    """Bytes this process holds of parameters, gradients, optimiser state and EMAs (shards only when sharded)."""
    params = list(model.parameters())
    opt = [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    return {"parameters": P.bytes_of(params), "gradients": P.bytes_of(p.grad for p in params if p.grad is not None),
            "optimizer": P.bytes_of(opt), "emas": P.bytes_of(v for w in emas.weights.values() for v in w.values())}


def grid_columns(count: int, num_classes: int) -> int:
    """Columns of a grid of ``count`` images where image i is class i % num_classes: a multiple of the classes
    near a square grid, so each column holds one class; a square grid when there are more classes than images."""
    if num_classes > count:
        return int(math.ceil(math.sqrt(count)))
    return num_classes * max(1, round(math.sqrt(count) / num_classes))


class GridSampler:
    """One-step samples of fixed noises and classes (class i % num_classes for image i) from the first EMA
    (the raw weights without EMAs), written as a PNG grid."""

    def __init__(self, cfg: TrainConfig, mcfg: ModelConfig, num_classes: int, device):
        s = cfg.sample
        self.cfg, self.device, self.prediction = s, device, cfg.loss.prediction
        shape = (mcfg.in_channels, mcfg.input_size, mcfg.input_size)
        self.noise = image_noise(range(s.count), shape, seed=s.seed, noise_scale=mcfg.noise_scale, device=device)
        self.labels = (torch.arange(s.count) % min(num_classes, mcfg.num_classes)).to(device)
        self.model = PMFDiT(mcfg).to(device).eval()
        self.nrow = grid_columns(s.count, min(num_classes, mcfg.num_classes))

    @torch.no_grad()
    def save(self, weights: dict, path: Path) -> None:
        """Samples of the weight set ``weights`` (a state dict of whole tensors)."""
        self.model.load_state_dict(weights)
        x = sample(self.model, self.noise, self.labels, steps=1, omega=self.cfg.omega, t_min=self.cfg.t_min,
                   t_max=self.cfg.t_max, prediction=self.prediction)
        save_grid(to_uint8(x).numpy(), path, nrow=self.nrow)  # image i is class i % C: one column per class
