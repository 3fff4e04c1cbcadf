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
from ..export.onnx_export import FP32
from ..export.onnx_runtime import is_onnx, onnx_checkpoint
from ..extras import MissingExtra
from ..folder_layout import SampleFolder
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
from ._eval_metrics import add_metric_args
from ._loading import add_common_model_args, add_sampling_speed_args


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="FID/IS (Inception), more metrics (--metrics) or the offline score of a "
                       "checkpoint or of given images (--images); grid sweeps",
                       description="Evaluate a checkpoint. Writes OUT/metrics.json with the exact settings (and, "
                       "for a grid, sweep.json, sweep.md and sweep.png). Under torchrun each rank generates its "
                       "own slice of the images: torchrun --nproc_per_node=8 --no-python pmf eval ...")
    add_common_model_args(p, sweep=True, required=False)
    add_sampling_speed_args(p)
    p.add_argument("--offline", action="store_true", help="the offline score: a classifier trained on --dataset "
                   "(accuracy and Frechet distance in its features), no Inception weights needed")
    p.add_argument("--dataset", default=None, choices=BUILTIN, help="built-in dataset of the offline score "
                   "(default: the one the checkpoint was trained on, else mnist-5k)")
    p.add_argument("--ref", default=None, help="reference statistics .npz (mu, sigma) for FID; see `pmf refstats`")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file (default: "
                   "$PMF_INCEPTION_WEIGHTS, then torch-fidelity's torch hub cache)")
    add_num_images(p, help="images per evaluation (default 50000 for FID, 1000 offline); image i has class "
                   "i %% num_classes. With --images: the first N images (default all)")
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
    add_metric_args(p)
    p.set_defaults(func=run)


def default_out(checkpoint: str) -> Path:
    local = Path(checkpoint).expanduser()
    if checkpoint != "random" and (local.is_file() or local.is_dir()):  # a file, or a sharded checkpoint folder
        return local.parent / f"eval-{local.stem}"
    return Path(f"eval-{Path(checkpoint.split(':')[-1]).stem or 'model'}")


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
                       f"--dataset with the built-in set the model was trained on ({', '.join(BUILTIN)}), or FID "
                       "(--ref) for a model of other data")


def check_args(args):
    """The flags checked before anything loads: (omegas, pairs), each None unless swept."""
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
    return omegas, pairs


def load_settings(args, device, rank: int, emas: list, omegas, pairs):
    """The sampler of the first EMA, the checkpoint's own setting and the grid of settings; sets args.steps,
    args.dataset and emas[0] from the checkpoint."""
    from ..evaluation.evaluate import grid

    onnx = is_onnx(args.checkpoint)  # an exported file (fp32 or int8) run in onnxruntime, as pmf sample does
    loaded = onnx_checkpoint(args) if onnx else load_for_sampling(args, device, emas[0])
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
    model = loaded.model if onnx else \
        prepare_sampler(loaded.model, compile=args.compile, cuda_graphs=args.cuda_graphs)
    args.dataset_known = args.dataset is not None or loaded.data in BUILTIN  # a default reference for --metrics
    args.dataset = offline_dataset(args.dataset, loaded.data)
    return model, base, combos


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


class Scorer:
    """Evaluates one setting of the grid with n images; loads another EMA's weights when the setting asks."""

    def __init__(self, args, model, ema, base, mode: str, inception, device, out: Path, rank: int):
        self.args, self.model, self.ema, self.base, self.mode = args, model, ema, base, mode
        self.inception, self.device, self.out, self.rank = inception, device, out, rank

    def settings(self, c: dict, n: int):
        from ..evaluation.evaluate import EvalSettings

        a = self.args
        return EvalSettings(num_images=n, seed=a.seed, steps=a.steps, omega=c["omega"], t_min=c["t_min"],
                            t_max=c["t_max"], noise_scale=a.noise_scale, batch_size=a.batch_size,
                            precision=a.precision, prediction=self.base.prediction)

    def __call__(self, c: dict, n: int, final: bool) -> dict:
        from ..evaluation.evaluate import evaluate

        a, out = self.args, self.out
        if c["ema"] != self.ema:
            self.model = prepare_sampler(load_for_sampling(a, self.device, c["ema"]).model, compile=a.compile,
                                         cuda_graphs=a.cuda_graphs)
            self.ema = c["ema"]
        net = self.inception
        return evaluate(self.model, self.settings(c, n), mode=self.mode, ref=a.ref, dataset=a.dataset,
                        inception=net if self.mode == "inception" else None,
                        plan=net if self.mode == "metrics" else None, device=self.device, out_dir=out,
                        png_dir=SampleFolder(out).pngs if final and a.save_png else None,
                        npz_path=SampleFolder(out).npz if final and a.save_npz and self.rank == 0 else None,
                        progress=not a.no_progress)


def sweep(score: Scorer, combos: list, num_images: int, metric: str) -> tuple[list, list]:
    """Every setting scored with ``num_images`` images: (table rows, full metrics) on rank 0 (empty elsewhere);
    writes sweep.json, sweep.md and sweep.png."""
    from ..evaluation.evaluate import plot, progress_bar, table

    args, rank, out = score.args, score.rank, score.out
    rows, full = [], []
    if rank == 0 and not args.fast and (args.save_png or args.save_npz):
        print("note: a sweep without --fast keeps no images (--save-png/--save-npz apply to a final run)")
    bar = progress_bar(len(combos), f"sweep ({num_images} images each)", not args.no_progress)
    for c in combos:
        m = score(c, num_images, final=False)
        if rank == 0:
            full.append(m)
            rows.append({**c, **{k: v for k, v in m.items() if isinstance(v, float)}})
        bar.update(1)
    bar.close()
    if rank == 0 and rows:
        (out / "sweep.json").write_text(json.dumps({"metric": metric, "num_images": num_images, "rows": rows},
                                                   indent=2))
        (out / "sweep.md").write_text(table(rows, metric) + "\n")
        try:
            plot(rows, metric, out / "sweep.png")
        except MissingExtra as err:  # the figure is optional: the sweep's results are in sweep.json and sweep.md
            print(f"sweep.png not written: {err}")
        print(table(rows, metric))
    return rows, full


def write_metrics(args, metrics: dict, chosen: dict, mode: str, out: Path, info, seconds: float,
                  sweep_record: dict | None, weights: dict | None = None, plan=None) -> None:
    """OUT/metrics.json: the metrics with the exact settings (``weights``: an ONNX file's record), and the
    summary line."""
    record = {**metrics, "ema": chosen["ema"], "checkpoint": args.checkpoint, "arch": args.arch,
              "weights": weights or dict(FP32),
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
    from ..evaluation.evaluate import best_row
    from ..parallel.process import broadcast_object, setup

    if args.images is not None:
        from ._eval_metrics import run_images

        return run_images(args)
    if args.checkpoint is None:
        raise PMFError("pmf eval needs --checkpoint (a model to sample) or --images (given images)")
    omegas, pairs = check_args(args)
    created = not dist.is_initialized()
    info = setup(args.device)
    rank, device = info.rank, info.device
    created = created and dist.is_initialized()
    emas = [e.strip() for e in args.ema.split(",") if e.strip()] if args.ema else [None]
    model, base, combos = load_settings(args, device, rank, emas, omegas, pairs)
    mode, inception = load_metric(args, model, device)
    num_images = args.num_images or (1000 if mode == "offline" or mode == "metrics" and set(inception.reps) <= {
        "offline", "pixels"} else 50_000)
    search_images = args.fast or num_images
    out = Path(args.out) if args.out else default_out(args.checkpoint)
    if rank == 0:
        output_folder(out)
    if mode == "metrics":
        from ._eval_metrics import sweep_metric
    metric = {"inception": "fid", "offline": "frechet"}.get(mode) or sweep_metric(inception, len(combos))
    score = Scorer(args, model, emas[0], base, mode, inception, device, out, rank)
    del model
    t0 = time.time()
    rows, full = sweep(score, combos, search_images, metric) if len(combos) > 1 else ([], [])
    chosen = combos[0]
    if len(combos) > 1:
        best = broadcast_object(rows.index(best_row(rows, metric)) if rank == 0 else None)
        chosen = combos[best]
    if len(combos) == 1 or args.fast:
        metrics = score(chosen, num_images, final=True)
    else:  # the sweep already evaluated every setting with the full count
        metrics = full[best] if rank == 0 else None
    if rank == 0:
        grid_record = {"metric": metric, "num_images": search_images, "settings": len(combos)}
        write_metrics(args, metrics, chosen, mode, out, info, round(time.time() - t0, 1),
                      grid_record if len(combos) > 1 else None, getattr(score.model, "weights", None),
                      inception if mode == "metrics" else None)
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
