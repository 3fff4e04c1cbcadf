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
from .sample import add_common_model_args, add_sampling_speed_args, model_from_arg


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PMFError(f"{name} takes numbers separated by commas, got {text!r}") from None


def _intervals(text: str) -> list[tuple[float, float]]:
    out = []
    for part in text.split(","):
        try:
            lo, hi = (float(v) for v in part.split(":"))
        except ValueError:
            raise PMFError(f"--interval takes T_MIN:T_MAX pairs separated by commas, e.g. '0.1:0.8,0.2:0.7', "
                           f"got {part!r}") from None
        out.append((lo, hi))
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="FID/IS (Inception) or the offline score of a checkpoint; grid sweeps",
                       description="Evaluate a checkpoint. Writes OUT/metrics.json with the exact settings (and, "
                       "for a grid, sweep.json, sweep.md and sweep.png). Under torchrun each rank generates its "
                       "own slice of the images: torchrun --nproc_per_node=8 --no-python pmf eval ...")
    add_common_model_args(p)
    add_sampling_speed_args(p)
    p.add_argument("--offline", action="store_true", help="the offline score: a classifier trained on --dataset "
                   "(accuracy and Frechet distance in its features), no Inception weights needed")
    p.add_argument("--dataset", default="mnist-5k", choices=BUILTIN, help="built-in dataset of the offline score")
    p.add_argument("--ref", default=None, help="reference statistics .npz (mu, sigma) for FID; see `pmf refstats`")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file (default: "
                   "$PMF_INCEPTION_WEIGHTS, then torch-fidelity's torch hub cache)")
    p.add_argument("--num-images", type=int, default=None, help="images per evaluation (default 50000 for FID, "
                   "1000 offline); image i has class i %% num_classes")
    p.add_argument("--omega", default="1", help="guidance scale(s), comma-separated for a sweep (default 1)")
    p.add_argument("--interval", default="0:1", help="guidance interval(s) T_MIN:T_MAX, comma-separated "
                   "(default 0:1)")
    p.add_argument("--emas", default=None, help="EMA names to sweep, comma-separated (overrides --ema)")
    p.add_argument("--fast", type=int, default=None, metavar="N", help="sweep with N images per setting, then "
                   "evaluate the best setting with --num-images")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="output folder (default: eval-<checkpoint name> beside the "
                   "checkpoint)")
    p.add_argument("--save-png", action="store_true", help="keep the final evaluation's images as PNGs")
    p.add_argument("--save-npz", action="store_true", help="keep them as samples.npz (gathered on rank 0)")
    p.add_argument("--no-progress", action="store_true")
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


def run(args) -> int:
    from ..distributed import broadcast_object, setup
    from ..evaluate import EvalSettings, best_row, evaluate, grid, plot, progress_bar, table
    from ..frechet import load_stats

    created = not dist.is_initialized()
    info = setup(args.device)
    rank, world, device = info.rank, info.world_size, info.device
    created = created and dist.is_initialized()
    progress = not args.no_progress
    emas = args.emas.split(",") if args.emas else [args.ema]
    combos = grid(_floats(args.omega, "--omega"), _intervals(args.interval), emas)

    def load(ema):
        net = model_from_arg(args.checkpoint, arch=args.arch, ema=ema, device=device, seed=args.seed)
        return prepare_sampler(net, compile=args.compile, cuda_graphs=args.cuda_graphs)

    model = load(emas[0])
    mode = choose_mode(args, model)
    inception = None
    if mode == "inception":
        from ..inception import find_weights, load_inception

        load_stats(args.ref)  # fail before sampling
        inception = load_inception(args.inception_weights, device=device)
    num_images = args.num_images or (50_000 if mode == "inception" else 1000)
    search_images = args.fast or num_images
    out = Path(args.out) if args.out else default_out(args.checkpoint)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    metric = "fid" if mode == "inception" else "frechet"

    def settings(c, n):
        return EvalSettings(num_images=n, seed=args.seed, steps=args.steps, omega=c["omega"], t_min=c["t_min"],
                            t_max=c["t_max"], noise_scale=args.noise_scale, batch_size=args.batch_size,
                            precision=args.precision)

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
