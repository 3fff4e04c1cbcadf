"""The pMF training loop (spec sections 3 and 6) for every scale: a CPU process, one GPU, or many processes
under ``torchrun`` (DDP, FSDP2, HSDP). ``train`` runs the named pieces: the checks (``prepare``), building and
resuming a run (``pmf.training.build``), the step (``pmf.training.step``), the loop with its metrics, grids and stops
(``Loop``) and the checkpoints (``pmf.training.saver``). All randomness comes from explicit generators: the data
order (``pmf.data.order``) from (seed, epoch), the loss draws from (seed, step, rank), so a resumed run
replays exactly the same batches and draws as an uninterrupted one. What a run shows lives in
``pmf.training.monitor``."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import parallel as P
from ..data import open_training_data
from ..data.order import DataOrder, batches, check_data, data_size, to_model_input
from ..errors import PMFError
from ..folder_layout import RESUME_AUTO, RunFolder
from ..model_configs import ModelConfig, model_config
from ..parallel import process as D
from ..posttrain.fd_objective import FDObjective, prepare_fd
from . import accumulate as A
from .build import (
    Parts,
    build,
    build_perceptual_loss,
    data_class_names,
    load_resume,
    parallelize,
    resolve_resume,
    restore,
)
from .config import TrainConfig
from .monitor import GridSampler, MetricsLog, run_header, state_bytes
from .saver import Checkpointer, CheckpointSaveError
from .step import step_seed, train_step
from .stopping import StopRequest
from .tracking import WandbRun, import_wandb

__all__ = ["CheckpointSaveError", "TrainingInterrupted", "step_seed", "train", "train_step"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request (the signal ``signum``) after ``step`` steps; ``checkpoint`` holds that step
    (None: nothing saved, or not rank 0)."""

    def __init__(self, step: int, checkpoint: Path | None, signum: int = signal.SIGINT):
        super().__init__(f"interrupted after step {step}")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


def finished_run(path: Path, step: int, cfg: TrainConfig) -> dict:
    """What ``train`` returns for a resume at or past ``cfg.steps``: the run's summary.json when it has one."""
    D.print0(f"pmf train: nothing to do: {path} is at step {step} and --steps is {cfg.steps}; the run is finished "
             "(give a larger --steps to train further)", file=sys.stderr)
    summary = RunFolder(cfg.out).summary
    if summary.is_file():
        return json.loads(summary.read_text())
    return {"steps": cfg.steps, "resumed_at": step, "last_checkpoint": str(path)}


class Meter:
    """Sums of the step metrics between two metrics lines; ``flush`` gives their means over steps and ranks."""

    def __init__(self, batch_size: int):
        self.batch_size, self.sums, self.n, self.since = batch_size, {}, 0, time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.float()
        self.n += 1

    def flush(self) -> tuple[dict[str, float], float]:
        now = time.perf_counter()
        means = {k: D.all_reduce_mean(v / self.n).item() for k, v in self.sums.items()}
        ips = self.n * self.batch_size / max(now - self.since, 1e-9)
        self.sums, self.n, self.since = {}, 0, now
        return means, ips


def prepare(cfg: TrainConfig, resume: str | None):
    """The checks before any process group: (model config, data, resume path, its checkpoint or None)."""
    world = D.world_size()
    if cfg.batch_size % world:
        raise PMFError(f"batch_size {cfg.batch_size} is not divisible by the number of processes ({world})")
    A.check_accumulation(cfg.batch_size, world, cfg.grad_accum)
    if cfg.wandb:
        import_wandb()
    mcfg = model_config(cfg.arch, **cfg.model_overrides)
    data = open_training_data(cfg.data, mcfg.input_size, 1 if mcfg.in_channels == 1 else 3)
    check_data(data, mcfg, cfg.data)
    if getattr(data, "streaming", False):
        data.check_first_batch(cfg.batch_size)
    resume_path = resolve_resume(resume, RunFolder(cfg.out).checkpoints)
    state = load_resume(resume_path, mcfg, cfg) if resume_path is not None else None
    return mcfg, data, resume_path, state


def train(cfg: TrainConfig, *, resume: str | None = None, progress: bool = True, stop: StopRequest | None = None
          ) -> dict:
    """Train per ``cfg``; ``resume`` is None, ``"auto"`` (newest checkpoint in the run folder, if any), a
    run folder or a checkpoint file. With ``stop``, a requested stop (``pmf.training.stopping``) ends the run after the
    running step with a checkpoint there (``TrainingInterrupted``). Returns a summary (last checkpoint, steps,
    seconds, last losses)."""
    mcfg, data, resume_path, state = prepare(cfg, resume)
    fd = prepare_fd(cfg, mcfg) if cfg.objective == "fd" else None  # its checks, before any work
    if state is not None and state.step >= cfg.steps:
        return finished_run(resume_path, state.step, cfg)
    info = D.setup(cfg.device, group=cfg.parallel != "ddp")
    if resume == RESUME_AUTO and resume_path is None:
        D.print0(f"--resume auto: no checkpoint in {RunFolder(cfg.out).checkpoints} yet; starting at step 0",
                 info=info, file=sys.stderr)
    parts = build(cfg, mcfg, info, data_class_names(data, mcfg), resuming=state is not None)
    start = 0
    if state is not None:
        start = restore(parts, resume_path, state)
        D.print0(f"resumed from {resume_path} at step {start}", info=info)
    objective = None
    if fd is not None:
        objective = FDObjective(cfg, mcfg, info, *fd)
        objective.compute_references(data)
        objective.ready(parts.model, state)
    del state
    parallelize(parts, cfg, info)
    return Loop(cfg, mcfg, data, parts, info, stop, objective).run(start, resumed=resume_path is not None,
                                                                   progress=progress)


class Loop:
    """The steps of one run with what happens between them: metrics lines, sample grids, checkpoints, the
    stops (a non-finite loss, a stop request). ``fd``: the FD-loss objective (``pmf.posttrain.fd_objective``), which
    makes
    its own batches, instead of the pMF loss on the data."""

    def __init__(self, cfg: TrainConfig, mcfg: ModelConfig, data, parts: Parts, info: D.DistInfo,
                 stop: StopRequest | None = None, fd=None):
        self.cfg, self.mcfg, self.data, self.parts, self.info, self.stop = cfg, mcfg, data, parts, info, stop
        self.fd = fd
        self.checkpointer = Checkpointer(cfg, mcfg, parts, info, data_class_names(data, mcfg),
                                         extra_state=fd.state_dict if fd is not None else None)
        self.perceptual = build_perceptual_loss(cfg, info.device)
        self.folder = RunFolder(cfg.out)
        self.grid = GridSampler(cfg, mcfg, len(getattr(data, "class_names", [])) or mcfg.num_classes, info.device) \
            if info.is_main and cfg.sample.every else None
        self.last_ckpt, self.last, self.wandb = None, {}, None

    def run(self, start: int, *, resumed: bool, progress: bool) -> dict:
        cfg, info = self.cfg, self.info
        if info.is_main:
            self.folder.root.mkdir(parents=True, exist_ok=True)
            self.folder.config.write_text(json.dumps(cfg.to_dict(), indent=2))
            if getattr(self.data, "resized", ""):  # the data's resize rule, beside the config that names the data
                self.folder.data.write_text(json.dumps({"data": cfg.data, "resized": self.data.resized}))
        self.log = MetricsLog(self.folder.metrics, start if resumed else None, info.is_main)
        self.wandb = WandbRun(cfg.wandb, self.folder.root, cfg.to_dict(), resumed=resumed) \
            if cfg.wandb and info.is_main else None
        try:
            return self.steps(start, progress)
        finally:
            if self.wandb is not None:
                self.wandb.finish()

    def steps(self, start: int, progress: bool) -> dict:
        cfg, info = self.cfg, self.info
        order = DataOrder(data_size(self.data), cfg.batch_size, info.rank, info.world_size, cfg.seed)
        D.print0(run_header(cfg, self.parts.model, self.data, info.device, start), info=info, file=sys.stderr)
        self.bar = tqdm(total=cfg.steps, initial=start, desc="training", unit="step",
                        disable=not (progress and info.is_main))
        self.meter, t_start = Meter(cfg.batch_size), time.perf_counter()
        steps = ((step, None) for step in range(start, cfg.steps)) if self.fd is not None else enumerate(
            batches(self.data, order, start, cfg.steps, cfg.num_workers, info.device.type == "cuda"), start=start)
        for step, batch in steps:
            loss, metrics, lr = self.step(step, batch)
            if not metrics:
                self.stop_on_nonfinite(step, loss)
            self.after_step(step + 1, metrics, lr, t_start)
        self.bar.close()
        self.checkpointer.finish()
        return self.summary(start, time.perf_counter() - t_start)

    def step(self, step: int, batch) -> tuple[torch.Tensor, dict, float]:
        if self.fd is not None:
            return self.fd.step(self.parts, step)
        x = to_model_input(batch[0], self.mcfg, self.info.device)
        y = batch[1].to(self.info.device, non_blocking=True)
        return train_step(self.parts, self.cfg, self.mcfg, step, self.info.rank, x, y, self.perceptual)

    def stop_on_nonfinite(self, step: int, loss: torch.Tensor) -> None:
        path = self.checkpointer.save(step) if step > self.checkpointer.last_saved else self.checkpointer.newest()
        self.bar.close()
        raise PMFError(f"non-finite loss ({loss.item()}) at step {step + 1}; training stopped. The last good "
                       f"checkpoint (before this step) is {path}; resume from it with a lower learning rate or "
                       "gradient clipping")

    def after_step(self, done: int, metrics: dict, lr: float, t_start: float) -> None:
        cfg = self.cfg
        self.meter.add(metrics)
        self.bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            self.last, ips = self.meter.flush()
            record = {"step": done, **self.last, "lr": lr, "img_per_s": ips, "time": time.perf_counter() - t_start}
            self.log.write(record)
            if self.wandb is not None:
                self.wandb.log(record)
            # loss_u / loss_v, not the adaptive-weighted loss (near 2 by construction, spec section 3)
            self.bar.set_postfix(**{k: f"{v:.4g}" for k, v in self.last.items() if k in ("loss_u", "loss_v")
                                    or k.startswith("fd_")}, img_s=f"{ips:.0f}")
        if cfg.sample.every and done % cfg.sample.every == 0:
            self.sample_grid(done)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            self.last_ckpt = self.checkpointer.save(done) or self.last_ckpt
        signum = self.stop.agreed(self.info.device) if self.stop is not None and done < cfg.steps else 0
        if signum:  # every rank agreed on this step: all save it together (the last step just finishes)
            if self.checkpointer.last_saved != done:
                self.last_ckpt = self.checkpointer.save(done) or self.last_ckpt
            self.checkpointer.finish()
            self.bar.close()
            raise TrainingInterrupted(done, self.last_ckpt, signum)

    def sample_grid(self, done: int) -> None:
        emas, model = self.parts.emas, self.parts.model
        weights = emas.weights[emas.names[0]] if emas.names else model.state_dict()
        if self.parts.sharded:  # whole tensors: a collective on every rank
            weights = {k: P.full(v) for k, v in weights.items()}
        if self.grid is not None:
            path = self.folder.grid(done)
            self.grid.save(weights, path)
            if self.wandb is not None:
                self.wandb.image(path, done)

    def summary(self, start: int, seconds: float) -> dict:
        p, ran = self.parts, max(self.cfg.steps - start, 0)
        summary = {"steps": self.cfg.steps, "resumed_at": start, "seconds": seconds,
                   "steps_per_s": ran / max(seconds, 1e-9),
                   "last_checkpoint": str(self.last_ckpt) if self.last_ckpt else None, **self.last,
                   "state_bytes": state_bytes(p.model, p.optimizer, p.emas)}
        if self.info.is_main:
            self.folder.summary.write_text(json.dumps(summary, indent=2))
        return summary
