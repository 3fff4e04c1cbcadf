"""``pmf toy``: the Swiss-roll experiment (x- vs u-prediction as the observation dimension grows)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import PMFError
from ..extras import pyplot
from ..toy import ToyConfig, quick_config, reference_floor, run_toy
from ._args import add_batch_size, add_out, add_progress, add_seed, add_workers

METRICS = (("distance", "2-D SW"), ("distance_full", "D-dim SW"), ("off_manifold", "off-plane |x|^2"),
           ("final_loss", "final loss"))


def parse_dims(text: str) -> list[int]:
    try:
        dims = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PMFError(f"--dims takes a comma-separated list of integers like '2,8,16,512', got {text!r}") from None
    if not dims:
        raise PMFError("--dims is empty")
    return dims


def format_table(results: list[dict]) -> str:
    """Rows D; for each metric an x-pred and a u-pred column."""
    by = {(r["dim"], r["prediction"]): r for r in results}
    dims = sorted({r["dim"] for r in results})
    preds = [p for p in ("x", "u") if any(r["prediction"] == p for r in results)]
    head = ["D"] + [f"{label} {p}-pred" for _, label in METRICS for p in preds]
    rows = [[str(d)] + [f"{by[(d, p)][key]:.3g}" if (d, p) in by else "-" for key, _ in METRICS for p in preds]
            for d in dims]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in [head, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def _pyplot():
    return pyplot("the figure needs matplotlib", also=", or pass --no-plot")


def plot_grid(samples: dict, dims: list[int], preds: list[str], path: Path, *, points: int = 2000) -> None:
    """Scatter plots of the 2-D projections: rows x-pred / u-pred, columns D."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(preds), len(dims), figsize=(1.9 * len(dims), 1.9 * len(preds)), squeeze=False)
    for i, pred in enumerate(preds):
        for j, dim in enumerate(dims):
            ax = axes[i][j]
            xy = samples[(dim, pred)][:points].numpy()
            ax.scatter(xy[:, 0], xy[:, 1], s=0.6, c="tab:blue" if pred == "x" else "tab:red", linewidths=0)
            ax.set_xlim(-1.6, 1.6)
            ax.set_ylim(-1.6, 1.6)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"D = {dim}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{pred}-prediction", fontsize=9)
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("toy", help="Swiss roll in D dimensions: x- vs u-prediction with the pMF objective",
                       description="Train a ReLU MLP with the pMF loss on a 2-D Swiss roll embedded in D dimensions, "
                       "predicting x and predicting u with the same budget, and compare one-step samples.")
    d = ToyConfig()
    add_out(p, default="runs/toy", help="folder for metrics.json and toy.png (default runs/toy)")
    p.add_argument("--dims", default=None, help="comma-separated observation dimensions (default "
                   f"{','.join(map(str, d.dims_list))})")
    p.add_argument("--quick", action="store_true", help="a small run of a few seconds (D = 2, 64)")
    add_seed(p)
    p.add_argument("--steps", type=int, default=None, help=f"training steps per model (default {d.steps})")
    add_batch_size(p, default=None, help=f"training batch (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {d.lr:g})")
    p.add_argument("--width", type=int, default=None, help=f"hidden width of the MLP (default {d.width})")
    p.add_argument("--depth", type=int, default=None, help=f"linear layers of the MLP (default {d.depth})")
    p.add_argument("--fm-fraction", type=float, default=None, help="share of each batch with r = t (default "
                   f"{d.fm_fraction:g})")
    p.add_argument("--eval-samples", type=int, default=None, help="one-step samples scored per model (default "
                   f"{d.eval_samples})")
    add_workers(p, help="processes training (dim, prediction) pairs side by side (default: min(2, CPU cores); 1 "
                "for --quick). Results do not depend on it.")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1: the matrices are "
                   "small, so processes use cores better than threads)")
    p.add_argument("--figure", default=None, help="figure path (default OUT/toy.png)")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ._args import output_file, output_folder

    if args.out:
        output_folder(args.out)
    if args.figure:
        output_file(args.figure, "--figure")
    workers = args.workers if args.workers is not None else (1 if args.quick else min(2, os.cpu_count() or 1))
    if args.threads < 1 or workers < 1:
        raise PMFError(f"--threads and --workers must be >= 1, got {args.threads} and {workers}")
    overrides = {k: getattr(args, k) for k in ("seed", "steps", "batch_size", "lr", "width", "depth", "fm_fraction",
                                               "eval_samples") if getattr(args, k) is not None}
    if args.dims is not None:
        overrides["dims"] = parse_dims(args.dims)
    cfg = quick_config(**overrides) if args.quick else ToyConfig(**overrides)
    figure = Path(args.figure) if args.figure else (Path(args.out) / "toy.png" if args.out else None)
    if figure is not None and not args.no_plot:
        _pyplot()  # the optional dependency is checked before minutes of training
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    bar = tqdm(total=cfg.steps * len(cfg.dims_list) * len(cfg.predictions), disable=args.no_progress,
               unit="step", dynamic_ncols=True)

    def progress(label: str, steps: int, loss: float) -> None:
        bar.set_description(label, refresh=False)
        bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
        bar.update(steps)

    start = time.perf_counter()
    try:
        results, samples = run_toy(cfg, progress, workers=workers, threads=args.threads)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    wall = time.perf_counter() - start
    floor = reference_floor(cfg)
    print(format_table(results))
    print(f"2-D SW between two independent roll sets of {cfg.eval_samples}: {floor:.3g}; wall time {wall:.0f} s")
    if args.out:  # the results first: a failing figure must not lose them
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        settings = {**cfg.settings(), "threads": args.threads, "workers": workers, "quick": args.quick}
        doc = {"results": results, "settings": settings, "reference_distance": floor, "wall_seconds": wall}
        (out / "metrics.json").write_text(json.dumps(doc, indent=2))
        print(f"wrote {out / 'metrics.json'}")
    if figure is not None and not args.no_plot:
        plot_grid(samples, cfg.dims_list, list(cfg.predictions), figure)
        print(f"wrote {figure}")
    return 0
