"""The pMF training loop (spec sections 3 and 6), one function for every scale: a CPU process, one GPU, or
many processes under ``torchrun`` (DDP, FSDP2, HSDP). All randomness comes from explicit generators: the data
order (``pmf.data.order``) from (seed, epoch), the loss draws from (seed, step, rank), so a resumed run
replays exactly the same batches and draws as an uninterrupted one. What a run shows lives in ``pmf.monitor``."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import distributed as D
from . import parallel as P
from .checkpoint import (
    FORMAT,
    latest_checkpoint,
    list_checkpoints,
    read_file,
    run_checkpoint,
    save_training_checkpoint,
)
from .config import ModelConfig, model_config
from .data import open_training_data
from .data.order import DataOrder, batches, check_data, to_model_input
from .ema import EMASet
from .errors import PMFError
from .monitor import GridSampler, MetricsLog, run_header, state_bytes
from .nn.attention import tangent_attention
from .nn.layers import Block
from .nn.model import PMFDiT
from .objective import pmf_loss, sample_draws
from .optim import build_optimizer, lr_factor, set_lr
from .seeds import LOSS, derive_seed
from .sharded_checkpoint import (
    ShardedSaver,
    ensure_optimizer_state,
    file_state,
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


def resolve_resume(resume: str | None, ckpt_dir: Path) -> Path | None:
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        return latest_checkpoint(ckpt_dir)
    path = Path(resume)
    return run_checkpoint(path) if path.is_dir() else path


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
    data = open_training_data(cfg.data, mcfg.input_size, 1 if mcfg.in_channels == 1 else 3)
    check_data(data, mcfg, cfg.data)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    resume_path = resolve_resume(resume, ckpt_dir)
    state = load_resume(resume_path, mcfg, cfg) if resume_path is not None else None
    names = getattr(data, "class_names", None)
    class_names = list(names) if names and len(names) == mcfg.num_classes else None

    sharded = cfg.parallel != "ddp"
    info = D.setup(cfg.device, group=sharded)
    device = info.device
    bf16 = cfg.precision == "bf16" and device.type == "cuda"
    if cfg.precision == "bf16" and device.type != "cuda":
        D.print0("precision bf16 applies on GPU only; training in fp32", info=info)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = PMFDiT(mcfg)
    if cfg.init and state is None:  # a new run from trained weights (a resumed one has its own): EMAs start here
        from .finetune import init_weights

        D.print0(init_weights(model, cfg, class_names), info=info, file=sys.stderr)
    model = model.to(device)
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
    if info.world_size > 1 and P.resolve_reduce(cfg.reduce, dist.get_backend()) == "ordered":
        if sharded:
            P.use_ordered_reduction(model)
        else:
            net.register_comm_hook(None, P.ddp_ordered_hook)
    saver = ShardedSaver(ckpt_dir, cfg.keep_last, cfg.async_checkpoint) if sharded else None
    perceptual = build_perceptual_loss(cfg, device)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    log = MetricsLog(out / "metrics.jsonl", start if resume_path is not None else None, info.is_main)
    order = DataOrder(len(data.labels), cfg.batch_size, info.rank, info.world_size, cfg.seed)
    grid = GridSampler(cfg, mcfg, len(getattr(data, "class_names", [])) or mcfg.num_classes, device) \
        if info.is_main and cfg.sample.every else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
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
                        class_names=class_names,
                        world_size=info.world_size, parallel=cfg.parallel, optimizer_rule=optimizer_rule(optimizer))
            path = saver.save(step, train_state(model, optimizer, emas), meta)
            last_saved = step
            return path if info.is_main else None
        if info.is_main:
            payload = dict(model_config=mcfg.to_dict(), model=_cpu(model.state_dict()), ema=emas.state_dict(),
                           optimizer=optimizer.state_dict(), train_config=cfg.to_dict(), world_size=info.world_size,
                           class_names=class_names,
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
                             noise_scale=mcfg.noise_scale, tr_uniform=L.tr_uniform, generator=gen,
                             class_dropout=L.class_dropout)
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


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state.items()}
