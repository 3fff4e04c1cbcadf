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
from ..toy import reference_floor, run_toy
from ._args import add_out, add_progress, add_seed
from ._config_flags import add_option_flags
from ._run_options import ToyOptions

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
    add_out(p, default="runs/toy", help="folder for metrics.json and toy.png (default runs/toy)")
    add_seed(p)
    add_option_flags(p, ToyOptions)
    add_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ._args import output_file, output_folder

    opts = ToyOptions.from_args(args)  # the ranges, then the experiment's own checks, before anything is written
    cfg = opts.to_config(args.seed, None if opts.dims is None else parse_dims(opts.dims))
    if args.out:
        output_folder(args.out)
    if opts.figure:
        output_file(opts.figure, "--figure")
    workers = opts.workers if opts.workers is not None else (1 if opts.quick else min(2, os.cpu_count() or 1))
    figure = Path(opts.figure) if opts.figure else (Path(args.out) / "toy.png" if args.out else None)
    if figure is not None and not opts.no_plot:
        _pyplot()  # the optional dependency is checked before minutes of training
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    bar = tqdm(total=cfg.steps * len(cfg.dims_list) * len(cfg.predictions), disable=args.no_progress,
               unit="step", dynamic_ncols=True)

    def progress(label: str, steps: int, loss: float) -> None:
        bar.set_description(label, refresh=False)
        bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
        bar.update(steps)

    start = time.perf_counter()
    try:
        results, samples = run_toy(cfg, progress, workers=workers, threads=opts.threads)
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
        settings = {**cfg.settings(), "threads": opts.threads, "workers": workers, "quick": opts.quick}
        doc = {"results": results, "settings": settings, "reference_distance": floor, "wall_seconds": wall}
        (out / "metrics.json").write_text(json.dumps(doc, indent=2))
        print(f"wrote {out / 'metrics.json'}")
    if figure is not None and not opts.no_plot:
        plot_grid(samples, cfg.dims_list, list(cfg.predictions), figure)
        print(f"wrote {figure}")
    return 0
