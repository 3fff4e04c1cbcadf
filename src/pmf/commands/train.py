"""``pmf train``: train pMF from a recipe (released ImageNet recipes or CPU recipes), a saved config, or
flags; runs as one process or under ``torchrun`` (DDP, FSDP2 or HSDP, ``--parallel``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from ..config import PRESETS
from ..errors import PMFError
from ..nn.attention import TANGENT_ATTENTIONS
from ..perceptual.config import PerceptualConfig
from ..sampling import PRECISIONS
from ..train_config import RECIPES, TrainConfig, recipe
from ._args import (
    add_batch_size,
    add_device,
    add_out,
    add_progress,
    add_seed,
    add_workers,
    check_device,
    deprecated,
    numbers,
)


def add_perceptual_args(p) -> None:
    g = p.add_argument_group("perceptual losses (need pixel-meanflow[perceptual])")
    g.add_argument("--lpips", action="store_true", default=None, help="add the LPIPS-VGG loss")
    g.add_argument("--convnext", action="store_true", default=None, help="add the ConvNeXt-V2 feature loss")
    g.add_argument("--no-perceptual", action="store_true", help="turn off a recipe's perceptual losses")
    g.add_argument("--lpips-lambda", type=float, default=None, help="weight of the LPIPS loss (default 0.4)")
    g.add_argument("--convnext-lambda", type=float, default=None, help="weight of the ConvNeXt loss (default 0.1)")
    g.add_argument("--perceptual-max-t", type=float, default=None, help="perceptual losses only for t below this "
                   "(default: the recipe's, else 0.8)")
    g.add_argument("--lpips-weights", default=None, help="local VGG16 (torchvision) or full LPIPS weight file "
                   "(else $PMF_LPIPS_VGG_WEIGHTS, else the torch-hub cache)")
    g.add_argument("--convnext-weights", default=None, help="local ConvNeXt-V2-Base weight file "
                   "(else $PMF_CONVNEXT_WEIGHTS, else the Hugging Face cache)")
    g.add_argument("--no-download", action="store_true", default=None,
                   help="never fetch missing perceptual weights; stop with a message naming the files instead")


def apply_perceptual_args(cfg: TrainConfig, args) -> None:
    if args.no_perceptual:
        cfg.perceptual = None
        return
    flags = {"lpips": args.lpips, "convnext": args.convnext, "lpips_lambda": args.lpips_lambda,
             "convnext_lambda": args.convnext_lambda, "max_t": args.perceptual_max_t,
             "lpips_weights": args.lpips_weights, "convnext_weights": args.convnext_weights,
             "download": False if args.no_download else None}
    given = {k: v for k, v in flags.items() if v is not None}
    if given:
        cfg.perceptual = PerceptualConfig(**{**dataclasses.asdict(cfg.perceptual or PerceptualConfig()), **given})


def add_init_args(p) -> None:
    from ..finetune import V_HEAD_INITS
    from ..objective import CLASS_DROPOUTS

    g = p.add_argument_group("fine-tuning: a new run from trained weights, label dropout (docs/training.md)")
    g.add_argument("--init", default=None, help="start from this checkpoint's weights (a run folder, training "
                   "checkpoint, export, release .pt, .safetensors or hf:OWNER/REPO/FILE): fresh optimiser, step 0, "
                   "EMAs from these weights; the architecture is the checkpoint's unless --arch is given")
    g.add_argument("--init-ema", default=None, help="which weights of --init: an EMA name or 'raw' (default: its "
                   "sampling EMA)")
    g.add_argument("--init-v-head", choices=list(V_HEAD_INITS), default=None, help="a checkpoint without v-head: "
                   "copy the u-head's blocks into it, or start it fresh (default copy)")
    g.add_argument("--class-dropout", choices=list(CLASS_DROPOUTS), default=None, help="which rows lose "
                   "their label: first-rows (the release: the first rows, which are the r = t rows) or per-sample "
                   "(any row, with the same probability) (default first-rows)")
    g.add_argument("--class-map", default=None, help="NEW=OLD,... (class names or numbers): class rows of --init "
                   "to keep for the data's classes (default: matching names, else the table when the counts agree)")


def apply_init_args(cfg: TrainConfig, args) -> None:
    from ..finetune import parse_class_map

    if args.init is not None:
        cfg.init = args.init
    if args.init_ema is not None:
        cfg.init_ema = args.init_ema
    if args.init_v_head is not None:
        cfg.init_v_head = args.init_v_head
    if args.class_map is not None:
        cfg.class_map = parse_class_map(args.class_map)
    if args.class_dropout is not None:
        cfg.loss = dataclasses.replace(cfg.loss, class_dropout=args.class_dropout)
    if (cfg.init_ema or cfg.class_map) and not cfg.init:
        raise PMFError("--init-ema and --class-map apply to --init: give the checkpoint to start from")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a pMF model (CPU, one GPU, or torchrun with many GPUs)",
                       description="Train pMF. Start from --recipe (default 'mnist') or --config FILE and override "
                       "fields with flags. Under torchrun, --batch-size is the global batch.")
    d = recipe("mnist")  # the defaults shown are the default recipe's; another recipe brings its own

    def default(value) -> str:
        return f"(default: the recipe's; mnist: {value})"

    p.add_argument("--recipe", default=None, help=f"one of: {', '.join(RECIPES)} (default mnist)")
    p.add_argument("--config", default=None, help="a config.json written by an earlier run")
    p.add_argument("--data", default=None, help="built-in name (mnist-5k, digits), image folder, .pmfpack folder "
                   "(see `pmf pack`) or .npz/.npy file")
    p.add_argument("--arch", default=None, help=f"model preset, one of {', '.join(PRESETS)} {default(d.arch)}")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the model (default: found in the data)")
    p.add_argument("--channels", type=int, default=None, help="image channels of the model (default: 3 for RGB "
                   "data, 1 for a folder of gray images, the preset's for other gray data, which is repeated to RGB "
                   "for an RGB model)")
    p.add_argument("--image-size", type=int, default=None, help="image size of the model (default: the data's "
                   "when all images have one size, else the preset's; images are center-cropped to it)")
    add_out(p, help=f"run folder: checkpoints, metrics.jsonl, samples {default(d.out)}")
    p.add_argument("--steps", type=int, default=None, help=f"training steps {default(d.steps)}")
    add_batch_size(p, default=None, help=f"global batch over all processes {default(d.batch_size)}")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate {default(f'{d.optim.lr:g}')}")
    p.add_argument("--optimizer", choices=["muon", "adamw"], default=None,
                   help=f"Muon for 2-D weights with Adam for the rest, or AdamW for all {default(d.optim.name)}")
    p.add_argument("--schedule", choices=["constant", "warmup", "cosine"], default=None,
                   help=f"learning-rate schedule {default(d.optim.schedule)}")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help=f"linear warm-up steps {default(d.optim.warmup_steps)}")
    p.add_argument("--grad-clip", type=float, default=None, help=f"clip the gradient norm to this "
                   f"{default(d.optim.grad_clip or 'off')}")
    add_seed(p, default=None, help=f"random seed of weights, data order and draws {default(d.seed)}")
    p.add_argument("--jvp", choices=["split", "fused", "inline"], default=None,
                   help="how du/dt is computed (all exact; default: pmf_loss's default)")
    p.add_argument("--tangent-attention", choices=list(TANGENT_ATTENTIONS), default=None,
                   help="attention's tangent in the inline du/dt: math (default) or the fused Triton kernel (CUDA)")
    p.add_argument("--ema-halflives", default=None, help="comma-separated half-lives in kimg, e.g. 500,1000,2000 "
                   f"{default(','.join(f'{v:g}' for v in d.ema.halflives_kimg) or 'none')}")
    p.add_argument("--ema-decays", default=None, help="comma-separated constant decays, e.g. 0.99,0.999 "
                   f"{default(','.join(f'{v:g}' for v in d.ema.decays) or 'none')}")
    p.add_argument("--log-every", type=int, default=None, help=f"steps between metrics lines {default(d.log_every)}")
    p.add_argument("--sample-every", type=int, default=None, help="steps between sample grids, 0: none "
                   f"{default(d.sample.every)}")
    p.add_argument("--ckpt-every", type=int, default=None, help=f"steps between checkpoints {default(d.ckpt_every)}")
    p.add_argument("--keep-last", type=int, default=None, help=f"checkpoints kept {default(d.keep_last)}")
    p.add_argument("--precision", choices=list(PRECISIONS), default=None, help="bf16: autocast on GPU "
                   f"{default(d.precision)}")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--grad-checkpointing", action="store_true", default=None, help="activation checkpointing")
    add_workers(p, help=f"decoding processes for image folders {default(d.num_workers)}")
    deprecated(p, "--num-workers", "workers", type=int)
    add_device(p)
    add_progress(p)
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint of --out), a run folder or a file")
    p.add_argument("--overwrite", action="store_true", help="start afresh in a run folder that has checkpoints "
                   "(deletes its checkpoints, metrics, samples and summary)")
    p.add_argument("--parallel", choices=["ddp", "fsdp", "hsdp"], default=None,
                   help="under torchrun: ddp (default; every process holds the whole model), fsdp (FSDP2: "
                   "parameters, gradients, optimiser state and EMAs sharded over all processes) or hsdp "
                   "(sharded within groups of --shard-size processes, replicated across groups)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="hsdp: processes per shard group (default: the processes per node)")
    p.add_argument("--reduce", choices=["auto", "ordered", "native"], default=None,
                   help="how processes average gradients: ordered (every element summed in rank order, so ddp, "
                   "fsdp and hsdp runs agree to the bit in the reduction), native (the backend's collectives) or "
                   "auto (default: ordered on CPU processes / gloo, native on NCCL)")
    p.add_argument("--async-checkpoint", action="store_true", default=None,
                   help="fsdp/hsdp: write the sharded checkpoints in the background")
    add_perceptual_args(p)
    add_init_args(p)
    p.set_defaults(func=run)


def config_from_args(args) -> TrainConfig:
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise PMFError(f"config file not found: {str(path)!r}")
        cfg = TrainConfig.from_dict(json.loads(path.read_text()))
    else:
        cfg = recipe(args.recipe or "mnist")
    data = cfg.to_dict()
    simple = {"data": args.data, "arch": args.arch, "out": args.out, "steps": args.steps,
              "batch_size": args.batch_size, "seed": args.seed, "log_every": args.log_every,
              "ckpt_every": args.ckpt_every, "keep_last": args.keep_last, "precision": args.precision,
              "compile": args.compile, "grad_checkpointing": args.grad_checkpointing,
              "num_workers": args.workers, "device": args.device, "parallel": args.parallel,
              "shard_size": args.shard_size, "async_checkpoint": args.async_checkpoint,
              "reduce": args.reduce}
    data.update({k: v for k, v in simple.items() if v is not None})
    optim = {"lr": args.lr, "name": args.optimizer, "schedule": args.schedule, "warmup_steps": args.warmup_steps,
             "grad_clip": args.grad_clip}
    data["optim"].update({k: v for k, v in optim.items() if v is not None})
    if args.jvp is not None:
        data["loss"]["jvp"] = args.jvp
    if args.tangent_attention is not None:
        data["loss"]["tangent_attention"] = args.tangent_attention
    if args.ema_halflives is not None:
        data["ema"]["halflives_kimg"] = numbers(args.ema_halflives, "--ema-halflives", allow_empty=True)
    if args.ema_decays is not None:
        data["ema"]["decays"] = numbers(args.ema_decays, "--ema-decays", allow_empty=True)
    if args.sample_every is not None:
        data["sample"]["every"] = args.sample_every
    cfg = TrainConfig.from_dict(data)
    apply_perceptual_args(cfg, args)
    apply_init_args(cfg, args)
    return cfg


RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "summary.json", "samples", "tensorboard", "config.json")


def guard_run_folder(out: str | Path, *, resume: str | None, overwrite: bool, flag: str = "--out") -> None:
    """Refuse to start a fresh run over a run folder with checkpoints (it would restart at step 0 and truncate
    metrics.jsonl); ``overwrite`` deletes that run's outputs first (on rank 0 only)."""
    import os
    import shutil

    from ..checkpoint import list_checkpoints

    out = Path(out)
    if resume not in (None, "", "none"):
        if overwrite:
            raise PMFError("--resume and --overwrite contradict each other: pick one")
        return
    found = list_checkpoints(out / "checkpoints")
    if not found:
        return
    if not overwrite:
        raise PMFError(f"{flag} {str(out)!r} already holds a run (checkpoints up to step {found[-1][0]}); continue "
                       "it with --resume auto, or start afresh with --overwrite (deletes its checkpoints and "
                       "metrics)")
    if int(os.environ.get("RANK", "0")) == 0:
        for name in RUN_OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        print(f"--overwrite: deleted the earlier run's outputs in {out}", flush=True)


@contextlib.contextmanager
def stop_after_step():
    """The first Ctrl-C asks the training loop to stop after the running step and save a checkpoint; a second
    one stops at once. Under torchrun (or off the main thread) Ctrl-C keeps its default effect."""
    from .. import train as T

    if os.environ.get("WORLD_SIZE", "1") != "1" or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        if T.stop_requested.is_set():
            raise KeyboardInterrupt
        T.stop_requested.set()
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    T.stop_requested.clear()
    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        T.stop_requested.clear()


def resume_command(argv: list[str] | None) -> str:
    """The command line that continues this run: the original one with ``--resume auto`` (and without
    ``--overwrite``, which would delete the run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not (a.startswith("--resume=") or a == "--overwrite"):
            kept.append(a)
    return shlex.join(["pmf", *kept, "--resume", "auto"])


def report_interrupt(stop: KeyboardInterrupt, cfg: TrainConfig, argv: list[str] | None) -> None:
    from ..checkpoint import latest_checkpoint

    ckpt = getattr(stop, "checkpoint", None) or latest_checkpoint(Path(cfg.out) / "checkpoints")
    where = f"at step {stop.step}" if hasattr(stop, "step") else "mid-step"
    if ckpt is None:
        print(f"pmf train: interrupted {where}; no checkpoint was saved yet, so there is nothing to resume",
              file=sys.stderr)
        return
    # a run started with --init continues from its own config (which names the init) without --init
    again = shlex.join(["pmf", "train", "--config", str(Path(cfg.out) / "config.json"), "--resume", "auto"]) \
        if cfg.init else resume_command(argv)
    print(f"pmf train: interrupted {where}; the last checkpoint is {ckpt}\nresume with: {again}",
          file=sys.stderr, flush=True)


def fit_model_to_data(cfg: TrainConfig, args) -> str:
    """Set ``cfg.model_overrides`` so that the model has the data's classes, channels and image size (or those
    of --num-classes / --channels / --image-size) where the preset differs; returns what was found."""
    from ..config import model_config
    from ..data.probe import probe

    facts = probe(cfg.data)
    if cfg.init:  # the architecture of the starting weights (checked against --arch when given)
        from ..finetune import init_architecture, init_source

        source = init_source(cfg.init, cfg.init_ema).model.config
        cfg.arch, cfg.model_overrides = init_architecture(source, args.arch)
    mcfg = model_config(cfg.arch, **cfg.model_overrides)
    for flag in ("num_classes", "channels", "image_size"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise PMFError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    want = {"num_classes": args.num_classes or facts.classes}
    if args.channels is not None:
        want["in_channels"] = args.channels
    elif facts.channels != mcfg.in_channels and not (facts.channels == 1 and mcfg.in_channels == 3
                                                      and facts.kind != "folder"):
        want["in_channels"] = facts.channels
    size = args.image_size or facts.size
    if size is not None and size != mcfg.input_size:
        if size % mcfg.patch_size:
            source = "--image-size" if args.image_size else f"the data's images are {size}x{size}:"
            raise PMFError(f"{source} {size} is not a multiple of the patch size {mcfg.patch_size} of {cfg.arch}; "
                           f"pass --image-size with a multiple of {mcfg.patch_size} (images are center-cropped "
                           "to it), or pick another --arch")
        want["input_size"] = size
    changed = {k: v for k, v in want.items() if getattr(mcfg, k) != v}
    cfg.model_overrides = {**cfg.model_overrides, **changed}
    model = f"model {cfg.arch}" + (f" with {', '.join(f'{k}={v}' for k, v in changed.items())}" if changed else "")
    return f"data {facts.describe()}; {model}"


def run(args) -> int:
    from ..distributed import cleanup
    from ..train import train

    cfg = config_from_args(args)
    if cfg.device is not None:
        check_device(cfg.device)
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise PMFError(f"--out {cfg.out!r} is a file; give a run folder (it is created if missing)")
    if args.init is not None and args.resume not in (None, "", "none"):
        raise PMFError("--init starts a new run from weights and --resume continues a run: pick one")
    guard_run_folder(cfg.out, resume=args.resume, overwrite=args.overwrite)
    found = fit_model_to_data(cfg, args)
    if os.environ.get("RANK", "0") == "0":
        print(found, file=sys.stderr, flush=True)  # stdout carries only the JSON summary
    try:
        with stop_after_step():
            summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt as stop:
        report_interrupt(stop, cfg, getattr(args, "argv", None))
        return 130
    finally:
        cleanup()
    print(json.dumps(summary, indent=2))
    return 0
