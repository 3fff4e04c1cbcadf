"""The pMF training loop (spec sections 3 and 6), one function for every scale: a CPU process, one GPU, or
many processes under ``torchrun`` (DDP). All randomness comes from explicit generators: the data order from
(seed, epoch), the loss draws from (seed, step, rank), so a resumed run replays exactly the same batches and
draws as an uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed as D
from . import parallel as P
from .checkpoint import FORMAT, latest_checkpoint, list_checkpoints, read_file, save_training_checkpoint
from .config import ModelConfig, model_config
from .data import ArrayData, FolderDataset, open_training_data
from .ema import EMASet
from .errors import PMFError
from .images import save_grid
from .nn.attention import tangent_attention
from .nn.layers import Block
from .nn.model import PMFDiT
from .objective import pmf_loss, sample_draws
from .optim import build_optimizer, lr_factor, set_lr
from .sampling import image_noise, sample, to_uint8
from .seeds import DATA_ORDER, LOSS, derive_seed
from .sharded_checkpoint import (
    ShardedSaver,
    ensure_optimizer_state,
    file_state,
    is_sharded_checkpoint,
    load_full_into,
    load_sharded,
    optimizer_rule,
    read_meta,
    train_state,
)
from .train_config import TrainConfig


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for the loss draws of (step, rank), independent of everything else."""
    return derive_seed(seed, step, rank, stream=LOSS)


class DataOrder:
    """Global batch ``step`` holds positions [step * B, (step + 1) * B) of an endless stream that visits the
    dataset in a fresh permutation per epoch (generator seeded by (seed, epoch)); rank r reads the r-th
    slice of B / world positions."""

    def __init__(self, size: int, global_batch: int, rank: int, world: int, seed: int):
        self.size, self.B, self.rank, self.world, self.seed = size, global_batch, rank, world, seed
        self._perms: dict[int, np.ndarray] = {}

    def perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, stream=DATA_ORDER))
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.size, generator=gen).numpy()
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        b = self.B // self.world
        pos = step * self.B + self.rank * b + np.arange(b)
        epochs, within = pos // self.size, pos % self.size
        return np.array([self.perm(int(e))[w] for e, w in zip(epochs, within)], dtype=np.int64)


class _StepBatches(torch.utils.data.Sampler):
    def __init__(self, order: DataOrder, start: int, stop: int):
        self.order, self.start, self.stop = order, start, stop

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.order.indices(step).tolist()

    def __len__(self) -> int:
        return self.stop - self.start


def batches(data, order: DataOrder, start: int, stop: int, num_workers: int, pin: bool):
    """Yield (uint8 images [b, H, W, C], int64 labels [b]) for steps start..stop-1."""
    num_workers = min(num_workers, os.cpu_count() or 1)  # more decoding processes than cores only slow down
    if isinstance(data, FolderDataset):
        loader = torch.utils.data.DataLoader(data, batch_sampler=_StepBatches(order, start, stop),
                                             num_workers=num_workers, pin_memory=pin,
                                             prefetch_factor=4 if num_workers else None)
        yield from loader
        return
    for step in range(start, stop):
        idx = order.indices(step)
        yield torch.from_numpy(np.asarray(data.images[idx])), torch.from_numpy(data.labels[idx])


def to_model_input(images: torch.Tensor, config: ModelConfig, device) -> torch.Tensor:
    """uint8 [b, H, W, C] -> float [b, C, H, W] in [-1, 1] on ``device``; grayscale is repeated to RGB."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[1] == 1 and config.in_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def check_data(data, config: ModelConfig, name: str) -> None:
    """Errors before any step: empty data, labels outside the model's classes, wrong image shapes."""
    labels = np.asarray(data.labels)
    if len(labels) == 0:
        raise PMFError(f"dataset {name!r} holds no images")
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise PMFError(f"dataset {name!r} has labels in [{labels.min()}, {labels.max()}] but the model has "
                       f"{config.num_classes} classes; pass --num-classes {int(labels.max()) + 1} "
                       "(model_overrides num_classes)")
    if isinstance(data, ArrayData):
        _, h, w, c = data.images.shape
        if (h, w) != (config.input_size, config.input_size):
            raise PMFError(f"dataset {name!r} has {h}x{w} images but the model takes {config.input_size}x"
                           f"{config.input_size}; pack the data at that size")
        if c != config.in_channels and not (c == 1 and config.in_channels == 3):
            raise PMFError(f"dataset {name!r} has {c} channels but the model takes {config.in_channels}")
    elif config.in_channels != 3:
        raise PMFError(f"image folders are read as RGB but the model takes {config.in_channels} channels")


def enable_activation_checkpointing(model: torch.nn.Module, enabled: bool = True) -> None:
    """Recompute each transformer block in the backward pass, on every du/dt path (``Block.forward`` and
    ``Block.jvp``; only when gradients are recorded, so the no-grad guidance and JVP passes run normally).
    State-dict keys are unchanged."""
    for block in model.modules():
        if isinstance(block, Block):
            block.checkpointing = enabled


def build_perceptual_loss(cfg: TrainConfig, device):
    """The optional perceptual term (imported lazily: the core trains without the extras)."""
    if cfg.perceptual is None or not cfg.perceptual.enabled:
        return None
    try:
        from .perceptual import build_perceptual
    except ImportError as err:
        raise PMFError(f"perceptual losses need `pip install 'pixel-meanflow[perceptual]'` ({err})") from None
    return build_perceptual(cfg.perceptual, device)


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
            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # TensorBoard is optional
            pass

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])


def resolve_resume(resume: str | None, ckpt_dir: Path) -> Path | None:
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        return latest_checkpoint(ckpt_dir)
    path = Path(resume)
    if is_sharded_checkpoint(path):
        return path
    if path.is_dir():
        found = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if found is None:
            raise PMFError(f"no training checkpoint found in {str(path)!r}")
        return found
    return path


def load_resume(path: Path, mcfg: ModelConfig, cfg: TrainConfig) -> dict:
    """Read a training checkpoint and check that it fits this run (same architecture, batch size). A sharded
    (DCP) folder gives its meta (``sharded`` set); its tensors are read once the model is built."""
    if path.is_dir():
        obj = {**read_meta(path), "sharded": True}
    else:
        obj = read_file(path)
    if obj.get("format") != FORMAT or ("optimizer" not in obj and not obj.get("sharded")):
        raise PMFError(f"{str(path)!r} is not a resumable training checkpoint (no optimiser state)")
    saved = obj["model_config"]
    diff = {k: (saved.get(k), v) for k, v in mcfg.to_dict().items() if saved.get(k) != v}
    if diff:
        text = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise PMFError(f"cannot resume from {str(path)!r}: it was trained with another architecture ({text})")
    saved_batch = obj.get("train_config", {}).get("batch_size")
    if saved_batch is not None and saved_batch != cfg.batch_size:
        raise PMFError(f"cannot resume from {str(path)!r} with batch size {cfg.batch_size}: it was trained with "
                       f"{saved_batch} (the data order and the EMA schedule depend on it)")
    return obj


# Set (by the command line's Ctrl-C handler) to stop after the running step with a checkpoint. Only for one
# process: under torchrun the ranks could see Ctrl-C at different steps, and a checkpoint is a collective.
stop_requested = threading.Event()


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request after ``step`` steps; ``checkpoint`` holds that step (None: nothing saved)."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"interrupted after step {step}")
        self.step, self.checkpoint = step, checkpoint


def train(cfg: TrainConfig, *, resume: str | None = None, progress: bool = True) -> dict:
    """Train per ``cfg``; ``resume`` is None, ``"auto"`` (newest checkpoint in the run folder, if any), a
    run folder or a checkpoint file. Returns a summary (last checkpoint, steps, seconds, last losses)."""
    world = D.env_world_size()
    if cfg.batch_size % world:
        raise PMFError(f"batch_size {cfg.batch_size} is not divisible by the number of processes ({world})")
    mcfg = model_config(cfg.arch, **cfg.model_overrides)
    data = open_training_data(cfg.data, mcfg.input_size)
    check_data(data, mcfg, cfg.data)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    resume_path = resolve_resume(resume, ckpt_dir)
    state = load_resume(resume_path, mcfg, cfg) if resume_path is not None else None

    sharded = cfg.parallel != "ddp"
    info = D.setup(cfg.device, group=sharded)
    device = info.device
    bf16 = cfg.precision == "bf16" and device.type == "cuda"
    if cfg.precision == "bf16" and device.type != "cuda":
        D.print0("precision bf16 applies on GPU only; training in fp32", info=info)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = PMFDiT(mcfg).to(device)
    model.validate_inputs = device.type == "cpu"
    if cfg.grad_checkpointing:
        enable_activation_checkpointing(model)
    if sharded:  # FSDP2 / HSDP: parameters, gradients, optimiser state and EMAs are sharded from here on
        mesh = P.build_mesh(cfg.parallel, device, cfg.shard_size)
        P.shard_model(model, mesh, bf16=bf16)
        optimizer = P.build_sharded_optimizer(model, cfg.optim, mesh)
    else:
        optimizer = build_optimizer(model, cfg.optim)
    emas = EMASet(model, cfg.ema, cfg.batch_size)
    start = 0
    if state is not None:
        if state.get("sharded"):
            load_sharded(resume_path, model, optimizer, emas)
        elif sharded:
            full = file_state(state, optimizer, model)
            ensure_optimizer_state(optimizer, model, {k: (tuple(v.shape), v.dtype) for k, v in full.items()})
            load_full_into(train_state(model, optimizer, emas), full)
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            emas.load_state_dict(state["ema"])
        start = int(state["step"])
        D.print0(f"resumed from {resume_path} at step {start}", info=info)
    del state
    jvp = cfg.loss.jvp
    if cfg.loss.tangent_attention == "triton":
        from .nn.triton_attention import triton_available

        if not triton_available(torch.empty(0, device=device)):
            raise PMFError(f"loss.tangent_attention 'triton' needs the triton package and a CUDA device (training "
                           f"on {device}); use 'math'")
    if cfg.compile:
        model.compile()
    net = model if sharded else D.wrap_ddp(model, info)
    saver = ShardedSaver(ckpt_dir, cfg.keep_last, cfg.async_checkpoint) if sharded else None
    perceptual = build_perceptual_loss(cfg, device)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    log = MetricsLog(out / "metrics.jsonl", start if resume_path is not None else None, info.is_main)
    order = DataOrder(len(data.labels), cfg.batch_size, info.rank, info.world_size, cfg.seed)
    grid = _GridSampler(cfg, mcfg, len(getattr(data, "class_names", [])) or mcfg.num_classes, device) \
        if info.is_main and cfg.sample.every else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.precision == "bf16" and device.type == "cuda" \
        else contextlib.nullcontext()
    L = cfg.loss
    D.print0(run_header(cfg, model, data, device, start), info=info, file=sys.stderr)  # stdout: the summary
    bar = tqdm(total=cfg.steps, initial=start, desc="training", unit="step", disable=not (progress and info.is_main))
    sums: dict[str, torch.Tensor] = {}
    n_acc, t_log, t_start, last_ckpt, last = 0, time.perf_counter(), time.perf_counter(), None, {}
    last_saved = max([s for s, _ in list_checkpoints(ckpt_dir)], default=-1)

    def save(step: int) -> Path | None:
        nonlocal last_saved
        path = None
        if saver is not None:  # every rank writes its shards
            meta = dict(step=step, model_config=mcfg.to_dict(), train_config=cfg.to_dict(), emas=emas.names,
                        world_size=info.world_size, parallel=cfg.parallel, optimizer_rule=optimizer_rule(optimizer))
            path = saver.save(step, train_state(model, optimizer, emas), meta)
            last_saved = step
            return path if info.is_main else None
        if info.is_main:
            payload = dict(model_config=mcfg.to_dict(), model=_cpu(model.state_dict()), ema=emas.state_dict(),
                           optimizer=optimizer.state_dict(), train_config=cfg.to_dict(), world_size=info.world_size,
                           rng={"torch": torch.get_rng_state()})
            path = save_training_checkpoint(ckpt_dir, step, payload, cfg.to_dict(), cfg.keep_last)
        last_saved = step
        D.barrier()
        return path

    for step, (images, labels) in enumerate(batches(data, order, start, cfg.steps, cfg.num_workers,
                                                    device.type == "cuda"), start=start):
        x = to_model_input(images, mcfg, device)
        y = labels.to(device, non_blocking=True)
        gen = torch.Generator(device).manual_seed(step_seed(cfg.seed, step, info.rank))
        draws = sample_draws(x, P_mean=L.P_mean, P_std=L.P_std, data_proportion=L.data_proportion,
                             cfg_max=L.cfg_max, cfg_beta=L.cfg_beta, class_dropout_prob=L.class_dropout_prob,
                             noise_scale=mcfg.noise_scale, tr_uniform=L.tr_uniform, generator=gen)
        lr = set_lr(optimizer, lr_factor(step, cfg.optim, cfg.steps))
        if hasattr(perceptual, "manual_seed"):  # the random crops follow the same per-(step, rank) seed
            perceptual.manual_seed(step_seed(cfg.seed + 1, step, info.rank))
        with autocast, tangent_attention(L.tangent_attention):
            res = pmf_loss(net, x, y, draws, num_classes=mcfg.num_classes, norm_p=L.norm_p, norm_eps=L.norm_eps,
                           prediction=L.prediction, perceptual=perceptual, **({"jvp": jvp} if jvp else {}))
        loss = res["loss"]
        bad = D.all_reduce_max((~torch.isfinite(loss.detach())).float())
        if bad.item() > 0:
            path = save(step) if step > last_saved else (list_checkpoints(ckpt_dir) or [(None, None)])[-1][1]
            bar.close()
            raise PMFError(f"non-finite loss ({loss.item()}) at step {step + 1}; training stopped. The last good "
                           f"checkpoint (before this step) is {path}; resume from it with a lower learning rate "
                           "or gradient clipping")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        metrics = {"loss": loss.detach(), "loss_u": res["loss_u"], "loss_v": res.get("loss_v", loss.new_zeros(()))}
        metrics.update({k: v.detach() for k, v in res.items()
                        if k.startswith("loss_") and torch.is_tensor(v) and v.dim() == 0})
        if cfg.optim.grad_clip is not None:
            metrics["grad_norm"] = P.full(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip))
        optimizer.step()
        done = step + 1
        emas.update(model, done)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v.float()
        n_acc += 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            last = {k: D.all_reduce_mean(v / n_acc).item() for k, v in sums.items()}
            ips = n_acc * cfg.batch_size / max(now - t_log, 1e-9)
            log.write({"step": done, **last, "lr": lr, "img_per_s": ips, "time": now - t_start})
            # loss_u / loss_v, not the adaptive-weighted loss (near 2 by construction, spec section 3)
            bar.set_postfix(loss_u=f"{last['loss_u']:.4g}", loss_v=f"{last['loss_v']:.4g}", img_s=f"{ips:.0f}")
            sums, n_acc, t_log = {}, 0, now
        if cfg.sample.every and done % cfg.sample.every == 0:
            weights = emas.weights[emas.names[0]] if emas.names else model.state_dict()
            if sharded:  # whole tensors: a collective on every rank
                weights = {k: P.full(v) for k, v in weights.items()}
            if grid is not None:
                grid.save(weights, out / "samples" / f"step_{done:08d}.png")
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            last_ckpt = save(done) or last_ckpt
        if stop_requested.is_set() and info.world_size == 1:
            if last_saved != done:
                last_ckpt = save(done) or last_ckpt
            bar.close()
            raise TrainingInterrupted(done, last_ckpt)
    bar.close()
    if saver is not None:
        saver.finish()
    seconds = time.perf_counter() - t_start
    ran = max(cfg.steps - start, 0)
    summary = {"steps": cfg.steps, "resumed_at": start, "seconds": seconds, "steps_per_s": ran / max(seconds, 1e-9),
               "last_checkpoint": str(last_ckpt) if last_ckpt else None, **last,
               "state_bytes": state_bytes(model, optimizer, emas)}
    if info.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_header(cfg: TrainConfig, model: torch.nn.Module, data, device, start: int) -> str:
    """One line before the first step: model, parameters, data, device, precision, steps."""
    params = sum(p.numel() for p in model.parameters())
    classes = len(getattr(data, "class_names", []) or []) or model.config.num_classes
    precision = cfg.precision if device.type == "cuda" else "fp32"
    steps = f"steps {start} -> {cfg.steps}" if start else f"{cfg.steps} steps"
    return (f"training {cfg.arch} ({params / 1e6:.2f}M parameters, {model.config.input_size}px) on {cfg.data} "
            f"({len(data.labels):,} images, {classes} classes) | {device}, {precision} | {steps}, "
            f"batch {cfg.batch_size}")


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, emas: EMASet) -> dict:
    """Bytes this process holds of parameters, gradients, optimiser state and EMAs (shards only when sharded)."""
    params = list(model.parameters())
    opt = [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    return {"parameters": P.bytes_of(params), "gradients": P.bytes_of(p.grad for p in params if p.grad is not None),
            "optimizer": P.bytes_of(opt), "emas": P.bytes_of(v for w in emas.weights.values() for v in w.values())}


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state.items()}


class _GridSampler:
    """One-step samples of fixed noises and classes (class i % num_classes for image i) from the first EMA
    (the raw weights without EMAs), written as a PNG grid."""

    def __init__(self, cfg: TrainConfig, mcfg: ModelConfig, num_classes: int, device):
        s = cfg.sample
        self.cfg, self.device = s, device
        shape = (mcfg.in_channels, mcfg.input_size, mcfg.input_size)
        self.noise = image_noise(range(s.count), shape, seed=s.seed, noise_scale=mcfg.noise_scale, device=device)
        self.labels = (torch.arange(s.count) % min(num_classes, mcfg.num_classes)).to(device)
        self.model = PMFDiT(mcfg).to(device).eval()
        self.nrow = min(num_classes, mcfg.num_classes) if s.count % min(num_classes, mcfg.num_classes) == 0 \
            else int(math.ceil(math.sqrt(s.count)))

    @torch.no_grad()
    def save(self, weights: dict, path: Path) -> None:
        """Samples of the weight set ``weights`` (a state dict of whole tensors)."""
        self.model.load_state_dict(weights)
        x = sample(self.model, self.noise, self.labels, steps=1, omega=self.cfg.omega, t_min=self.cfg.t_min,
                   t_max=self.cfg.t_max)
        save_grid(to_uint8(x).numpy(), path, nrow=self.nrow)  # image i is class i % C: one column per class
