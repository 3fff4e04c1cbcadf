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
from ..sampling import prepare_sampler
from ._args import (
    add_batch_size,
    add_guidance,
    add_num_images,
    add_out,
    add_progress,
    add_seed,
    check_device,
    check_guidance,
    intervals,
    load_for_sampling,
    numbers,
    output_folder,
    sampling_setting,
)
from ._loading import add_common_model_args, add_sampling_speed_args


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="FID/IS (Inception) or the offline score of a checkpoint; grid sweeps",
                       description="Evaluate a checkpoint. Writes OUT/metrics.json with the exact settings (and, "
                       "for a grid, sweep.json, sweep.md and sweep.png). Under torchrun each rank generates its "
                       "own slice of the images: torchrun --nproc_per_node=8 --no-python pmf eval ...")
    add_common_model_args(p, sweep=True)
    add_sampling_speed_args(p)
    p.add_argument("--offline", action="store_true", help="the offline score: a classifier trained on --dataset "
                   "(accuracy and Frechet distance in its features), no Inception weights needed")
    p.add_argument("--dataset", default=None, choices=BUILTIN, help="built-in dataset of the offline score "
                   "(default: the one the checkpoint was trained on, else mnist-5k)")
    p.add_argument("--ref", default=None, help="reference statistics .npz (mu, sigma) for FID; see `pmf refstats`")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file (default: "
                   "$PMF_INCEPTION_WEIGHTS, then torch-fidelity's torch hub cache)")
    add_num_images(p, help="images per evaluation (default 50000 for FID, 1000 offline); image i has class "
                   "i %% num_classes")
    add_guidance(p, sweep=True)
    p.add_argument("--fast", type=int, default=None, metavar="N", help="sweep with N images per setting, then "
                   "evaluate the best setting with --num-images")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 1: one forward pass)")
    add_seed(p, help="image i uses its own generator from (seed, i) (default 0)")
    add_batch_size(p)
    add_out(p, default="runs/eval", help="output folder (default runs/eval)")
    p.add_argument("--save-png", action="store_true", help="keep the final evaluation's images as PNGs")
    p.add_argument("--save-npz", action="store_true", help="keep them as samples.npz (gathered on rank 0)")
    add_progress(p)
    p.set_defaults(func=run)


def default_out(checkpoint: str) -> Path:
    local = Path(checkpoint).expanduser()
    if checkpoint != "random" and (local.is_file() or local.is_dir()):  # a file, or a sharded checkpoint folder
        return local.parent / f"eval-{local.stem}"
    return Path(f"eval-{Path(checkpoint.split(':')[-1]).stem or 'model'}")


def choose_mode(args, model) -> str:
    """"offline" when asked or when the Inception weights are missing for a small built-in-sized model;
    "inception" when the weights are there; else the missing-weights error."""
    from ..inception import find_weights, weights_available

    if args.offline:
        return "offline"
    if weights_available(args.inception_weights):
        if args.ref is None:
            raise PMFError("FID needs reference statistics: --ref FILE.npz (see `pmf refstats` and "
                           "docs/evaluation.md), or --offline for the classifier score")
        return "inception"
    cfg = model.config
    if args.inception_weights is None and cfg.num_classes <= 10 and cfg.input_size <= 64:
        print("Inception weights not found: reporting the OFFLINE classifier score instead of FID "
              f"(dataset {args.dataset}).", flush=True)
        return "offline"
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
    """Refuse an offline score whose classifier cannot read the model's images: the classifier sees the data
    set's own size (a model trained on it zero-padded by up to a quarter is cropped back), one channel (RGB is
    averaged, as gray training data are repeated to RGB) and its classes."""
    from ..data import load_builtin

    ref = load_builtin(dataset, split="test")
    size, channels, classes = ref.images.shape[1], ref.images.shape[3], ref.num_classes
    problems = []
    if not size <= config.input_size <= size + size // 4:
        problems.append(f"its images are {size}x{size}, the model's {config.input_size}x{config.input_size}")
    if config.in_channels not in (channels, 3):
        problems.append(f"its images have {channels} channel(s), the model's {config.in_channels}")
    if config.num_classes != classes:
        problems.append(f"it has {classes} classes, the model {config.num_classes}")
    if problems:
        raise PMFError(f"the offline score of {dataset} cannot judge this model: {'; '.join(problems)}. Use "
                       f"--dataset with the data the model was trained on, or FID (--ref)")


def run(args) -> int:
    from ..distributed import broadcast_object, setup
    from ..evaluate import EvalSettings, best_row, evaluate, grid, plot, progress_bar, table
    from ..frechet import load_stats

    args.device = check_device(args.device)
    omegas, pairs = numbers(args.omega, "--omega"), intervals(args.interval)
    check_guidance(steps=args.steps)
    for omega in omegas or []:
        check_guidance(omega=omega)
    for lo, hi in pairs or []:
        check_guidance(t_min=lo, t_max=hi)
    check_guidance(t_min=args.t_min, t_max=args.t_max)
    for name in ("num_images", "fast", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < (2 if name != "batch_size" else 1):
            raise PMFError(f"--{name.replace('_', '-')} must be >= {2 if name != 'batch_size' else 1}, got {value}")
    if args.out is not None and Path(args.out).is_file():
        raise PMFError(f"--out {args.out!r} is a file; give a folder (it is created if missing)")
    created = not dist.is_initialized()
    info = setup(args.device)
    rank, world, device = info.rank, info.world_size, info.device
    created = created and dist.is_initialized()
    progress = not args.no_progress
    emas = [e.strip() for e in args.ema.split(",") if e.strip()] if args.ema else [None]

    def load(ema):
        return prepare_sampler(load_for_sampling(args, device, ema).model, compile=args.compile,
                               cuda_graphs=args.cuda_graphs)

    loaded = load_for_sampling(args, device, emas[0])
    base = sampling_setting(loaded, steps=args.steps)  # the checkpoint's setting; the flags below may sweep it
    emas[0] = loaded.ema  # the checkpoint's default EMA when none was named
    args.steps = base.steps
    one = (args.t_min if args.t_min is not None else base.t_min, args.t_max if args.t_max is not None else base.t_max)
    combos = grid(omegas or [base.omega], pairs or [one], emas)
    if len(combos) == 1:
        c = combos[0]
        chosen_setting = sampling_setting(loaded, omega=c["omega"], t_min=c["t_min"], t_max=c["t_max"],
                                          steps=args.steps)
        if rank == 0:
            print(f"sampling: {chosen_setting.describe()}", flush=True)
    elif rank == 0:
        print(f"sampling: a sweep of {len(combos)} settings; the checkpoint's own is {base.describe()}", flush=True)
    model = prepare_sampler(loaded.model, compile=args.compile, cuda_graphs=args.cuda_graphs)
    args.dataset = offline_dataset(args.dataset, loaded.data)
    del loaded
    mode = choose_mode(args, model)
    if mode == "offline":
        check_offline_dataset(model.config, args.dataset)
    inception = None
    if mode == "inception":
        from ..inception import find_weights, load_inception

        load_stats(args.ref)  # fail before sampling
        inception = load_inception(args.inception_weights, device=device)
    num_images = args.num_images or (50_000 if mode == "inception" else 1000)
    search_images = args.fast or num_images
    out = Path(args.out) if args.out else default_out(args.checkpoint)
    if rank == 0:
        output_folder(out)
    metric = "fid" if mode == "inception" else "frechet"

    def settings(c, n):
        return EvalSettings(num_images=n, seed=args.seed, steps=args.steps, omega=c["omega"], t_min=c["t_min"],
                            t_max=c["t_max"], noise_scale=args.noise_scale, batch_size=args.batch_size,
                            precision=args.precision, prediction=base.prediction)

    def score(c, n, final):
        nonlocal model
        if c["ema"] != score.ema:
            model, score.ema = load(c["ema"]), c["ema"]
        return evaluate(model, settings(c, n), mode=mode, ref=args.ref, dataset=args.dataset, inception=inception,
                        device=device, png_dir=out / "samples" if final and args.save_png else None,
                        npz_path=out / "samples.npz" if final and args.save_npz and rank == 0 else None,
                        progress=progress)

    score.ema = emas[0]
    t0 = time.time()
    rows, full = [], []
    if len(combos) > 1:
        if rank == 0 and not args.fast and (args.save_png or args.save_npz):
            print("note: a sweep without --fast keeps no images (--save-png/--save-npz apply to a final run)")
        bar = progress_bar(len(combos), f"sweep ({search_images} images each)", progress)
        for c in combos:
            m = score(c, search_images, final=False)
            if rank == 0:
                full.append(m)
                rows.append({**c, **{k: v for k, v in m.items() if isinstance(v, float)}})
            bar.update(1)
        bar.close()
    if rank == 0 and rows:
        (out / "sweep.json").write_text(json.dumps({"metric": metric, "num_images": search_images, "rows": rows},
                                                   indent=2))
        (out / "sweep.md").write_text(table(rows, metric) + "\n")
        plot(rows, metric, out / "sweep.png")
        print(table(rows, metric))
    chosen = combos[0]
    if len(combos) > 1:
        best = broadcast_object(rows.index(best_row(rows, metric)) if rank == 0 else None)
        chosen = combos[best]
    if len(combos) == 1 or args.fast:
        metrics = score(chosen, num_images, final=True)
    else:  # the sweep already evaluated every setting with the full count
        metrics = full[best] if rank == 0 else None
    if rank == 0:
        record = {**metrics, "ema": chosen["ema"], "checkpoint": args.checkpoint, "arch": args.arch,
                  "dataset": metrics.get("dataset", args.dataset) if mode == "offline" else None,
                  "world_size": world, "device": str(device), "seconds": round(time.time() - t0, 1),
                  "args": {k: v for k, v in vars(args).items() if k != "func"}, "argv": sys.argv[1:],
                  "pixel_meanflow": __version__}
        if mode == "inception":
            record["inception_weights"] = str(find_weights(args.inception_weights))
        if len(combos) > 1:
            record["sweep"] = {"metric": metric, "num_images": search_images, "settings": len(combos)}
        (out / "metrics.json").write_text(json.dumps(record, indent=2))
        print(summary(record) + f"\nwrote {out / 'metrics.json'}")
    if created:
        dist.destroy_process_group()
    return 0


def summary(m: dict) -> str:
    s = m["settings"]
    where = f"omega {s['omega']:g}, interval [{s['t_min']:g}, {s['t_max']:g}], ema {m['ema']}, " \
            f"{s['num_images']} images"
    if m["score"] == "inception":
        return f"FID {m['fid']:.3f}  IS {m['inception_score']:.2f} (Inception protocol vs {m['reference']}; {where})"
    return (f"OFFLINE score (classifier on {m['dataset']}, not FID; {where}): accuracy {m['accuracy']:.3f}, "
            f"frechet {m['frechet']:.2f} | baselines: real images {m['frechet_real_floor']:.2f} "
            f"(accuracy {m['accuracy_real_floor']:.3f}), class means {m['frechet_class_means']:.2f}")
