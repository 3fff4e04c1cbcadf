"""``pmf train``: train pMF from a recipe (released ImageNet recipes or CPU recipes), a saved config, or
flags; runs as one process or under ``torchrun`` (DDP, FSDP2 or HSDP, ``--parallel``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import PMFError
from ..nn.attention import TANGENT_ATTENTIONS
from ..perceptual.config import PerceptualConfig
from ..train_config import RECIPES, TrainConfig, recipe


def add_perceptual_args(p) -> None:
    g = p.add_argument_group("perceptual losses (need pixel-meanflow[perceptual])")
    g.add_argument("--lpips", action="store_true", default=None, help="add the LPIPS-VGG loss")
    g.add_argument("--convnext", action="store_true", default=None, help="add the ConvNeXt-V2 feature loss")
    g.add_argument("--no-perceptual", action="store_true", help="turn off a recipe's perceptual losses")
    g.add_argument("--lpips-lambda", type=float, default=None)
    g.add_argument("--convnext-lambda", type=float, default=None)
    g.add_argument("--perceptual-max-t", type=float, default=None)
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


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a pMF model (CPU, one GPU, or torchrun with many GPUs)",
                       description="Train pMF. Start from --recipe (default 'mnist') or --config FILE and override "
                       "fields with flags. Under torchrun, --batch-size is the global batch.")
    p.add_argument("--recipe", default=None, help=f"one of: {', '.join(RECIPES)} (default mnist)")
    p.add_argument("--config", default=None, help="a config.json written by an earlier run")
    p.add_argument("--data", default=None, help="built-in name (mnist-5k, digits), image folder, .pmfpack folder "
                   "(see `pmf pack`) or .npz/.npy file")
    p.add_argument("--arch", default=None, help="model preset, e.g. pMF-B/16")
    p.add_argument("--out", default=None, help="run folder (checkpoints, metrics.jsonl, samples)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch over all processes")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=["muon", "adamw"], default=None)
    p.add_argument("--schedule", choices=["constant", "warmup", "cosine"], default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--jvp", choices=["split", "fused", "inline"], default=None,
                   help="how du/dt is computed (all exact; default: pmf_loss's default)")
    p.add_argument("--tangent-attention", choices=list(TANGENT_ATTENTIONS), default=None,
                   help="attention's tangent in the inline du/dt: math (default) or the fused Triton kernel (CUDA)")
    p.add_argument("--ema-halflives", default=None, help="comma-separated half-lives in kimg, e.g. 500,1000,2000")
    p.add_argument("--ema-decays", default=None, help="comma-separated constant decays, e.g. 0.99,0.999")
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--sample-every", type=int, default=None, help="steps between sample grids (0: none)")
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--keep-last", type=int, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--grad-checkpointing", action="store_true", default=None, help="activation checkpointing")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--parallel", choices=["ddp", "fsdp", "hsdp"], default=None,
                   help="under torchrun: ddp (default; every process holds the whole model), fsdp (FSDP2: "
                   "parameters, gradients, optimiser state and EMAs sharded over all processes) or hsdp "
                   "(sharded within groups of --shard-size processes, replicated across groups)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="hsdp: processes per shard group (default: the processes per node)")
    p.add_argument("--async-checkpoint", action="store_true", default=None,
                   help="fsdp/hsdp: write the sharded checkpoints in the background")
    p.add_argument("--resume", default=None,
                   help="'auto' (newest checkpoint of --out), a run folder, a checkpoint file or a sharded checkpoint "
                   "folder (any --parallel mode resumes any of them)")
    add_perceptual_args(p)
    p.set_defaults(func=run)


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PMFError(f"{flag} takes comma-separated numbers, got {text!r}") from None


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
              "num_workers": args.num_workers, "device": args.device, "parallel": args.parallel,
              "shard_size": args.shard_size, "async_checkpoint": args.async_checkpoint}
    data.update({k: v for k, v in simple.items() if v is not None})
    optim = {"lr": args.lr, "name": args.optimizer, "schedule": args.schedule, "warmup_steps": args.warmup_steps,
             "grad_clip": args.grad_clip}
    data["optim"].update({k: v for k, v in optim.items() if v is not None})
    if args.jvp is not None:
        data["loss"]["jvp"] = args.jvp
    if args.tangent_attention is not None:
        data["loss"]["tangent_attention"] = args.tangent_attention
    if args.ema_halflives is not None:
        data["ema"]["halflives_kimg"] = _floats(args.ema_halflives, "--ema-halflives")
    if args.ema_decays is not None:
        data["ema"]["decays"] = _floats(args.ema_decays, "--ema-decays")
    if args.sample_every is not None:
        data["sample"]["every"] = args.sample_every
    cfg = TrainConfig.from_dict(data)
    apply_perceptual_args(cfg, args)
    return cfg


def run(args) -> int:
    from ..distributed import cleanup
    from ..train import train

    cfg = config_from_args(args)
    try:
        summary = train(cfg, resume=args.resume)
    finally:
        cleanup()
    print(json.dumps(summary, indent=2))
    return 0
