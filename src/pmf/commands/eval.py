"""``pmf eval``: FID / IS with the standard Inception protocol, or the offline classifier score; one setting or
a grid sweep over guidance scales, intervals and EMAs. Runs under ``torchrun`` (each rank samples its own
slice of the image indices) or as one plain process."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

from .. import __version__
from ..data import BUILTIN
from ..errors import PMFError
from ._args import (
    add_guidance,
    add_out,
    add_progress,
    check_device,
    check_sampling_flags,
    intervals,
    load_sampler_arg,
    numbers,
    output_folder,
)
from ._config_flags import add_option_flags
from ._eval_metrics import add_metric_args
from ._loading import add_common_model_args
from ._options import EvalOptions


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="FID/IS (Inception), more metrics (--metrics) or the offline score of a "
                       "checkpoint or of given images (--images); grid sweeps",
                       description="Evaluate a checkpoint. Writes OUT/metrics.json with the exact settings (and, "
                       "for a grid, sweep.json, sweep.md and sweep.png). Under torchrun each rank generates its "
                       "own slice of the images: torchrun --nproc_per_node=8 --no-python pmf eval ...")
    add_common_model_args(p, sweep=True, required=False)
    p.add_argument("--offline", action="store_true", help="the offline score: a classifier trained on --dataset "
                   "(accuracy and Frechet distance in its features), no Inception weights needed")
    p.add_argument("--dataset", default=None, choices=BUILTIN, help="built-in dataset of the offline score "
                   "(default: the one the checkpoint was trained on, else mnist-5k)")
    p.add_argument("--ref", default=None, help="reference statistics .npz (mu, sigma) for FID; see `pmf refstats`")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file (default: "
                   "$PMF_INCEPTION_WEIGHTS, then torch-fidelity's torch hub cache)")
    add_guidance(p, sweep=True)
    add_out(p, default="runs/eval", help="output folder (default runs/eval)")
    add_progress(p)
    add_option_flags(p, EvalOptions)
    add_metric_args(p)
    p.set_defaults(func=run)


def choose_mode(args, model) -> str:
    """"offline" when asked (--offline); "inception" when the Inception weights are there; else the error that
    names the weights file (FID was asked for: another score in its place would pass for it)."""
    from ..evaluation.inception import find_weights, weights_available

    if args.metrics is not None:
        if args.offline:
            raise PMFError("--offline is the classifier score; with --metrics use --repr offline instead")
        return "metrics"
    if args.offline:
        return "offline"
    if weights_available(args.inception_weights):
        if args.ref is None:
            raise PMFError("FID needs reference statistics: --ref FILE.npz (see `pmf refstats` and "
                           "docs/evaluation.md), or --offline for the classifier score")
        return "inception"
    find_weights(args.inception_weights)  # raises the error naming the file and where to put it
    raise AssertionError("unreachable")


def offline_dataset(asked: str | None, trained_on: str | None) -> str:
    """The offline score's data set: ``--dataset``, else the built-in set the checkpoint records as its
    training data, else mnist-5k. A model trained on one built-in set is not judged on another."""
    if asked is None:
        return trained_on if trained_on in BUILTIN else "mnist-5k"
    if trained_on in BUILTIN and asked != trained_on:
        raise PMFError(f"the checkpoint was trained on {trained_on}; the offline score of {asked} would judge "
                       f"it against other images. Use --dataset {trained_on} (or leave --dataset out)")
    return asked


def check_offline_dataset(config, dataset: str) -> None:
    """Refuse an offline score whose classifier cannot read the model's images: the classifier reads the data
    set's own size, a copy up to a quarter larger or a whole multiple of it (``offline_score.size_fit``), one
    channel (RGB is averaged, as gray training data are repeated to RGB) and its classes."""
    from ..data import load_builtin
    from ..evaluation.offline_score import READABLE, size_fit

    ref = load_builtin(dataset, split="test")
    size, channels, classes = ref.images.shape[1], ref.images.shape[3], ref.num_classes
    problems = []
    if size_fit(config.input_size, size) in (None, "pad"):
        problems.append(f"its classifier reads {size}x{size} images {READABLE}, the model's are "
                        f"{config.input_size}x{config.input_size}")
    if config.in_channels not in (channels, 3):
        problems.append(f"its images have {channels} channel(s), the model's {config.in_channels}")
    if config.num_classes != classes:
        problems.append(f"it has {classes} classes, the model {config.num_classes}")
    if problems:
        raise PMFError(f"the offline score of {dataset} cannot judge this model: {'; '.join(problems)}. Score a "
                       f"model of a built-in set ({', '.join(BUILTIN)}) trained at a size it reads (pmf train "
                       "--image-size), or any model with FID (--ref)")


def check_args(args):
    """The flags checked before anything loads (the options' ranges are checked by ``EvalOptions``): (omegas,
    pairs, emas); omegas and pairs None unless swept, emas [None] unless named."""
    args.device = None if args.device is None else check_device(args.device)  # None: the sampler's (setup)
    omegas, pairs = numbers(args.omega, "--omega"), intervals(args.interval)
    for omega in omegas or []:
        check_sampling_flags(omega=omega)
    for lo, hi in pairs or []:
        check_sampling_flags(t_min=lo, t_max=hi)
    check_sampling_flags(t_min=args.t_min, t_max=args.t_max)
    if args.out is not None and Path(args.out).is_file():
        raise PMFError(f"--out {args.out!r} is a file; give a folder (it is created if missing)")
    emas = [e.strip() for e in args.ema.split(",") if e.strip()] if args.ema else [None]
    return omegas, pairs, emas


def load_grid(args, opts: EvalOptions, device, rank: int, emas: list, omegas, pairs):
    """The sampler of the first EMA, the checkpoint's own setting (with --steps) and the grid of settings;
    sets args.dataset (and args.dataset_known) from the checkpoint."""
    from ..evaluation.evaluate import grid

    sampler = load_sampler_arg(args, ema=emas[0], device=str(device))
    base = sampler.setting(steps=opts.steps)  # the checkpoint's setting; the flags below may sweep it
    emas = [sampler.ema, *emas[1:]]  # the checkpoint's default EMA when none was named
    one = (args.t_min if args.t_min is not None else base.t_min, args.t_max if args.t_max is not None else base.t_max)
    combos = grid(omegas or [base.omega], pairs or [one], emas)
    if rank == 0:
        c = combos[0]
        text = sampler.setting(omega=c["omega"], t_min=c["t_min"], t_max=c["t_max"], steps=opts.steps).describe() \
            if len(combos) == 1 else f"a sweep of {len(combos)} settings; the checkpoint's own is {base.describe()}"
        print(f"sampling: {text}", flush=True)
    args.dataset_known = args.dataset is not None or sampler.loaded.data in BUILTIN  # a default reference
    args.dataset = offline_dataset(args.dataset, sampler.loaded.data)
    return sampler, base, combos


def load_metric(args, model, device):
    """The mode ("inception", "offline" or "metrics"), checked before sampling, and the Inception network (or
    the metrics' plan, or None)."""
    from ..evaluation.frechet import load_stats

    mode = choose_mode(args, model)
    if mode == "metrics":
        from ._eval_metrics import build_plan

        return mode, build_plan(args, model.config.input_size, device)
    if mode == "offline":
        check_offline_dataset(model.config, args.dataset)
    inception = None
    if mode == "inception":
        from ..evaluation.inception import load_inception

        load_stats(args.ref)  # fail before sampling
        inception = load_inception(args.inception_weights, device=device)
    return mode, inception


def write_metrics(args, metrics: dict, chosen: dict, mode: str, out: Path, info, seconds: float,
                  sweep_record: dict | None, weights: dict | None = None, plan=None, arch: str | None = None) -> None:
    """OUT/metrics.json: the metrics with the exact settings (``weights``: an ONNX file's record; ``arch``: the
    model's preset, recorded or recognised), and the summary line."""
    record = {**metrics, "ema": chosen["ema"], "checkpoint": args.checkpoint, "arch": arch or args.arch,
              "weights": weights,
              "dataset": metrics.get("dataset", args.dataset) if mode == "offline" else None,
              "world_size": info.world_size, "device": str(info.device), "seconds": seconds,
              "args": {k: v for k, v in vars(args).items() if k != "func"}, "argv": sys.argv[1:],
              "pixel_meanflow": __version__}
    if mode == "inception":
        from ..evaluation.inception import find_weights
        record["inception_weights"] = str(find_weights(args.inception_weights))
    if mode == "metrics":
        from ._eval_metrics import describe
        record["representations"] = describe(plan)
    if sweep_record is not None:
        record["sweep"] = sweep_record
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    print(summary(record) + f"\nwrote {out / 'metrics.json'}")


def run(args) -> int:
    from ..evaluation.sweep import Scoring, Sweep
    from ..parallel.process import setup
    from ..sampler_loading import sampler_device

    opts = EvalOptions.from_args(args)  # the ranges of the flags, for --images too
    if args.images is not None:
        from ._eval_metrics import run_images

        return run_images(args)
    if args.checkpoint is None:
        raise PMFError("pmf eval needs --checkpoint (a model to sample) or --images (given images)")
    omegas, pairs, emas = check_args(args)
    created = not dist.is_initialized()
    info = setup(sampler_device(args.checkpoint, args.device))  # an .onnx file: cpu, where onnxruntime runs
    rank, device = info.rank, info.device
    created = created and dist.is_initialized()
    sampler, base, combos = load_grid(args, opts, device, rank, emas, omegas, pairs)
    mode, net = load_metric(args, sampler.model, device)
    num_images = opts.num_images or (1000 if mode == "offline" or mode == "metrics" and set(net.reps) <= {
        "offline", "pixels"} else 50_000)
    out = Path(args.out)  # default runs/eval (add_out)
    if rank == 0:
        output_folder(out)
    if mode == "metrics":
        from ._eval_metrics import sweep_metric
    metric = {"inception": "fid", "offline": "frechet"}.get(mode) or sweep_metric(net, len(combos))
    scoring = Scoring(mode, net, args.ref, args.dataset, opts.seed, opts.batch_size, opts.save_png, opts.save_npz,
                      progress=not args.no_progress)
    t0 = time.time()
    result = Sweep(sampler, base, scoring, device, out).run(combos, num_images, metric, fast=opts.fast)
    arch = sampler.loaded.preset
    del sampler
    if rank == 0:
        write_metrics(args, result.metrics, result.chosen, mode, out, info, round(time.time() - t0, 1),
                      result.record, result.weights, net if mode == "metrics" else None, arch)
    if created:
        dist.destroy_process_group()
    return 0


def summary(m: dict) -> str:
    s = m["settings"]
    where = f"omega {s['omega']:g}, interval [{s['t_min']:g}, {s['t_max']:g}], ema {m['ema']}, " \
            f"{s['num_images']} images"
    if m["score"] == "metrics":
        from ._eval_metrics import summary as metrics_summary

        return f"{metrics_summary(m)} ({where})"
    if m["score"] == "inception":
        return f"FID {m['fid']:.3f}  IS {m['inception_score']:.2f} (Inception protocol vs {m['reference']}; {where})"
    return (f"OFFLINE score (classifier on {m['dataset']}, not FID; {where}): accuracy {m['accuracy']:.3f}, "
            f"frechet {m['frechet']:.2f} | baselines: real images {m['frechet_real_floor']:.2f} "
            f"(accuracy {m['accuracy_real_floor']:.3f}), class means {m['frechet_class_means']:.2f}")
