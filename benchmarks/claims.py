"""The paper's claims on real images: x- against u-prediction as the patch dimension grows (Table 2), and the
ablations a CPU can run (Muon against AdamW, the patch bottleneck, adaptive weighting, data_proportion).

Every cell trains the ``mnist`` recipe (pMF-MNIST/7 widths) on MNIST-5k brought to SIZE px by ``--image-size``
(the package's resize rule, recorded in the run's data.json) with SIZE/4 px patches, so that every model has
16 tokens and only the dimension per token (patch^2) grows: 28/7 = 49, 56/14 = 196, 112/28 = 784, 224/56 =
3136. Each cell's last checkpoint is sampled through ``pmf sample`` (50 per class) at omega 1 and at the
recipe's guidance (omega 3 on [0.1, 0.8]), with 1 and 2 steps, and judged by the offline score
(pmf.evaluation.offline_score:
images average-pooled back to 28 px; accuracy and the Frechet ratio, the generated images' Frechet distance
over that of per-class mean images, below 1 is better than blurry means).

Resumable: a cell with a result file is skipped, a cell with checkpoints resumes (``--resume auto``).

    python benchmarks/claims.py run --work /tmp/claims --jobs 2            # every cell, main study first
    python benchmarks/claims.py run --work /tmp/claims --only main-112-x-0  # cells whose id starts so
    python benchmarks/claims.py table                                      # docs/claims.md's tables
    python benchmarks/claims.py table --write                              # ... written into docs/claims.md
    python benchmarks/claims.py figure --work /tmp/claims --out docs/claims.png
    python benchmarks/claims.py curves --out docs/claims_curves.png           # the loss curves, x against u
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]  # this checkout's package and benchmarks/common.py
RESULTS = ROOT / "benchmarks" / "results" / "cpu" / "claims"
PATCH = {28: 7, 56: 14, 112: 28, 224: 56}  # 16 tokens at every size
GUIDED = ("--omega", "3", "--interval", "0.1:0.8")  # the mnist recipe's setting
SETTINGS = {"omega1_1step": ("--omega", "1", "--steps", "1"), "guided_1step": (*GUIDED, "--steps", "1"),
            "omega1_2step": ("--omega", "1", "--steps", "2"), "guided_2step": (*GUIDED, "--steps", "2")}


@dataclass(frozen=True)
class Cell:
    study: str  # "main" or an ablation's name
    size: int
    pred: str
    seed: int
    flags: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.study}-{self.size}-{self.pred}-{self.seed}"

    def train_args(self, steps: int, out: Path) -> list[str]:
        mo = {"patch_size": PATCH[self.size], **self.overrides}
        return ["train", "--recipe", "mnist", "--data", "mnist-5k", "--image-size", str(self.size),
                "--model-overrides", json.dumps(mo), "--loss-prediction", self.pred, "--seed", str(self.seed),
                "--steps", str(steps), "--out", str(out), "--resume", "auto", "--no-progress", "--sample-every",
                "0", "--ckpt-every", "200", *self.flags]


ABLATIONS = {  # name: (flags, model overrides); each at 112/28 and 28/7, x-prediction
    "adamw": (("--optimizer", "adamw", "--lr", "1e-3"), {}),
    "bottleneck16": ((), {"bottleneck_dim": 16}),
    "bottleneck512": ((), {"bottleneck_dim": 512}),
    "no-adaptive": (("--loss-norm-p", "0"), {}),
    "dp0.25": (("--loss-data-proportion", "0.25"), {}),
    "dp0.75": (("--loss-data-proportion", "0.75"), {}),
}


def cells(seeds: int, sizes: list[int]) -> list[Cell]:
    """Main study first (the acceptance pair 112/28 first), then the ablations, seed by seed."""
    out = [Cell("main", s, p, seed) for s in sizes for seed in range(seeds) for p in ("x", "u")]
    out += [Cell(name, s, "x", seed, flags, mo) for seed in range(seeds)
            for name, (flags, mo) in ABLATIONS.items() for s in (112, 28)]  # every ablation's seed 0 first
    return out


def pmf(args: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    f = open(log, "a")
    f.write(f"$ pmf {' '.join(args)}\n")
    f.flush()
    return subprocess.Popen([sys.executable, "-m", "pmf.cli", *args], env=env, stdout=f, stderr=f)


def wait(proc: subprocess.Popen, what: str, log: Path) -> None:
    if proc.wait():
        raise SystemExit(f"{what} failed (exit {proc.returncode}); see {log}")


def loss_curve(run: Path) -> dict:
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if r.strip()]
    times = [r["time"] for r in rows]
    seconds = sum(a for a, b in zip(times, times[1:] + [0.0]) if b < a)  # a resumed run restarts the clock
    return {"step": [r["step"] for r in rows], "loss": [r["loss"] for r in rows],
            "loss_u": [r.get("loss_u") for r in rows], "train_seconds": seconds}


def score(cell: Cell, run: Path, steps: int, log: Path, threads: int) -> dict:
    from pmf.evaluation.offline_score import offline_scores

    ckpt = run / "checkpoints" / f"step_{steps:08d}.pt"
    scores = {}
    for name, flags in SETTINGS.items():
        out = run / "samples" / name
        wait(pmf(["sample", "--checkpoint", str(ckpt), "--out", str(out), "--per-class", "50", "--no-png",
                  "--no-progress", "--seed", "0", *flags], log, threads), f"sampling {cell.id}", log)
        s = np.load(out / "samples.npz")
        r = offline_scores(s["images"], s["labels"], verbose=False)
        scores[name] = {"accuracy": r["accuracy"], "frechet": r["frechet"],
                        "frechet_ratio": r["frechet"] / r["frechet_class_means"]}
    return scores


def run_cell(cell: Cell, work: Path, steps: int, threads: int) -> None:
    from common import cpu_model

    result = RESULTS / f"{cell.id}.json"
    run, log = work / cell.id, work / f"{cell.id}.log"
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    wait(pmf(cell.train_args(steps, run), log, threads), f"training {cell.id}", log)
    curve = loss_curve(run)
    scores = score(cell, run, steps, log, threads)
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps({
        "cell": cell.id, "study": cell.study, "size": cell.size, "patch": PATCH[cell.size],
        "dims_per_token": PATCH[cell.size] ** 2, "prediction": cell.pred, "seed": cell.seed, "steps": steps,
        "flags": list(cell.flags), "model_overrides": cell.overrides, "scores": scores, "curve": curve,
        "train_minutes": curve["train_seconds"] / 60, "wall_minutes_this_call": (time.time() - t0) / 60,
        "threads": threads, "cpu": cpu_model(), "torch": torch.__version__}, indent=1))
    print(f"{cell.id}: {json.dumps(scores['guided_1step'])}", flush=True)


def run(args) -> None:
    every = cells(args.seeds, args.sizes)
    unknown = [o for o in args.only or [] if not any(c.id.startswith(o) for c in every)]
    if unknown:
        raise SystemExit(f"--only {' '.join(unknown)}: no cell id starts so (ids are STUDY-SIZE-PREDICTION-SEED, "
                         f"e.g. main-112-x-0, with STUDY main or one of {', '.join(ABLATIONS)})")
    todo = [c for c in every if not (RESULTS / f"{c.id}.json").exists()
            and (not args.only or any(c.id.startswith(o) for o in args.only))]
    print(f"{len(todo)} cells to run: {', '.join(c.id for c in todo)}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    running: list[subprocess.Popen] = []
    for cell in todo:
        while len(running) >= args.jobs:
            running = [p for p in running if p.poll() is None] or []
            time.sleep(5)
        cmd = [sys.executable, __file__, "one", cell.id, "--work", str(args.work), "--steps", str(args.steps),
               "--threads", str(args.threads), "--seeds", str(args.seeds), "--sizes", *map(str, args.sizes)]
        running.append(subprocess.Popen(cmd))
    for p in running:
        p.wait()


def one(args) -> None:
    known = {c.id: c for c in cells(args.seeds, args.sizes)}
    if args.cell not in known:
        raise SystemExit(f"no cell {args.cell!r} with --seeds {args.seeds} --sizes "
                         f"{' '.join(map(str, args.sizes))}; cells are STUDY-SIZE-PREDICTION-SEED, e.g. "
                         f"main-112-x-0, with STUDY main or one of {', '.join(ABLATIONS)}")
    run_cell(known[args.cell], args.work, args.steps, args.threads)


def load_results() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]


def mean_spread(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{v.mean():.3f} ± {(v.max() - v.min()) / 2:.3f}" if len(v) > 1 else f"{v[0]:.3f} (1 seed)"


PAPER = {  # the direction each ablation takes in the paper (spec section 8), against the recipe
    "adamw": "Adam worse than Muon (FID 18.88 against 9.56 at 160 epochs)",
    "bottleneck16": "trains (JiT: bottlenecks of 16 to 512 all train)",
    "bottleneck512": "trains (JiT: bottlenecks of 16 to 512 all train)",
    "no-adaptive": "no number in the pMF paper; the recipe weights adaptively (norm_p 1)",
    "dp0.25": "no number at 0.25; the full (r, t) sampler beats r = t only and r = 0 only",
    "dp0.75": "no number at 0.75; the full (r, t) sampler beats r = t only and r = 0 only",
}


def grouped() -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in load_results():
        groups.setdefault((r["study"], r["size"], r["prediction"]), []).append(r)
    return groups


def values(rs: list[dict], setting: str, key: str) -> list[float]:
    return [r["scores"][setting][key] for r in rs]


TABLES = ("headline", "cells", "ablations")  # the blocks of docs/claims.md that `table --write` replaces


def table(args) -> None:
    """Markdown tables (mean ± half the seed-to-seed range): x against u per size at the recipe's guidance, one
    step; every cell and setting; each ablation against the recipe (main, x) at the same size. Printed, or with
    ``--write DOC`` put between DOC's markers ``<!-- claims.py table: NAME -->`` and ``<!-- /claims.py table -->``
    (NAME one of TABLES), leaving the rest of DOC as it is."""
    write = getattr(args, "write", None)
    if write is not None and not write.is_file():
        raise SystemExit(f"--write {write}: no such file; give a document that holds the tables' markers "
                         f"(`<!-- claims.py table: NAME -->` ... `<!-- /claims.py table -->`), e.g. docs/claims.md")
    groups = grouped()
    blocks = dict(zip(TABLES, (headline_table(groups), cell_table(groups), ablation_table(groups))))
    if write is None:
        print("\n\n".join("\n".join(lines) for lines in blocks.values()))
        return
    write.write_text(fill_tables(write.read_text(), blocks))
    print(f"wrote {', '.join(TABLES)} into {write}")


def fill_tables(doc: str, blocks: dict[str, list[str]]) -> str:
    """``doc`` with each named block's lines between its markers; a marker missing or repeated is an error."""
    for name, lines in blocks.items():
        start, end = f"<!-- claims.py table: {name} -->\n", "<!-- /claims.py table -->"
        if doc.count(start) != 1:
            raise SystemExit(f"the document must hold the line {start.strip()!r} once (it holds it "
                             f"{doc.count(start)} times)")
        head, rest = doc.split(start)
        if end not in rest:
            raise SystemExit(f"no {end!r} after {start.strip()!r}")
        doc = head + start + "\n".join(lines) + "\n" + rest[rest.index(end):]
    return doc


def headline_table(groups: dict) -> list[str]:
    lines = ["| input / patch | dims per token | seeds (x, u) | x: accuracy / Frechet ratio | u: accuracy / Frechet "
             "ratio | u's Frechet ratio over x's |", "|---|---|---|---|---|---|"]
    for size in sorted({k[1] for k in groups if k[0] == "main"}):
        x, u = groups.get(("main", size, "x"), []), groups.get(("main", size, "u"), [])
        if not (x and u):
            continue
        cols = [f"{mean_spread(values(g, 'guided_1step', 'accuracy'))} / "
                f"{mean_spread(values(g, 'guided_1step', 'frechet_ratio'))}" for g in (x, u)]
        fr = [np.mean(values(g, "guided_1step", "frechet_ratio")) for g in (x, u)]
        ratio = fr[1] / fr[0]
        lines.append(f"| {size} / {PATCH[size]} | {PATCH[size] ** 2} | {len(x)}, {len(u)} | {cols[0]} | {cols[1]} | "
                     f"{ratio:.1f} |")
    return lines


def cell_table(groups: dict) -> list[str]:
    lines = ["| study | input / patch | dims per token | prediction | seeds | setting | accuracy | Frechet ratio | "
             "minutes per cell |", "|---|---|---|---|---|---|---|---|---|"]
    for (study, size, pred), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "main", kv[0])):
        for setting in SETTINGS:
            minutes = np.mean([r["train_minutes"] for r in rs])
            lines.append(f"| {study} | {size} / {PATCH[size]} | {PATCH[size] ** 2} | {pred} | {len(rs)} | {setting} | "
                         f"{mean_spread(values(rs, setting, 'accuracy'))} | "
                         f"{mean_spread(values(rs, setting, 'frechet_ratio'))} | {minutes:.1f} |")
    return lines


def ablation_table(groups: dict) -> list[str]:
    lines = ["| ablation | input / patch | seeds | accuracy | Frechet ratio | recipe's Frechet ratio | "
             "difference / spread | seed by seed: ablation - recipe | the paper |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (study, size, _), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        base = groups.get(("main", size, "x"))
        if study == "main" or not base:
            continue
        fr, fr0 = values(rs, "guided_1step", "frechet_ratio"), values(base, "guided_1step", "frechet_ratio")
        spread = max(np.ptp(fr) / 2, np.ptp(fr0) / 2, 1e-9)
        by_seed = {r["seed"]: r["scores"]["guided_1step"]["frechet_ratio"] for r in base}
        paired = ", ".join(f"{r['scores']['guided_1step']['frechet_ratio'] - by_seed[r['seed']]:+.3f}"
                           for r in sorted(rs, key=lambda r: r["seed"]) if r["seed"] in by_seed)
        lines.append(f"| {study} | {size} / {PATCH[size]} | {len(rs)} | "
                     f"{mean_spread(values(rs, 'guided_1step', 'accuracy'))} | {mean_spread(fr)} | "
                     f"{mean_spread(fr0)} | "
                     f"{(np.mean(fr) - np.mean(fr0)) / spread:+.1f} | {paired} | {PAPER[study]} |")
    return lines


def figure(args) -> None:
    """Rows: patch dimension; columns: x, u (seed 0, guided, 1 step; the first 10 images, one per class)."""
    from pmf.extras import pyplot

    sizes = [s for s in PATCH if (args.work / f"main-{s}-x-0" / "samples").is_dir()]
    if not sizes:
        raise SystemExit(f"--work {args.work}: no main-SIZE-x-0/samples folder to draw; give the --work folder of "
                         f"`claims.py run`, after its seed-0 main cells have finished")
    plt = pyplot()
    fig, axes = plt.subplots(len(sizes), 2, figsize=(12, 0.85 * len(sizes) + 0.25), squeeze=False)
    for i, s in enumerate(sizes):
        for j, pred in enumerate(("x", "u")):
            ax = axes[i][j]
            ax.axis("off")
            path = args.work / f"main-{s}-{pred}-0" / "samples" / "guided_1step" / "samples.npz"
            if not path.exists():
                continue
            d = np.load(path)
            pick = [int(np.flatnonzero(d["labels"] == c)[0]) for c in range(10)]
            row = np.concatenate([d["images"][k, ..., 0] for k in pick], axis=1)
            ax.imshow(row, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{s} px, patch {PATCH[s]} ({PATCH[s] ** 2} dims/token): {pred}-prediction", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def curves(args) -> None:
    """The training loss curves (loss_u: the mean squared error of the compound velocity V, the same quantity
    for both predictions; the weighted loss is near 2 by construction), one panel per size, x against u."""
    from pmf.extras import pyplot

    plt = pyplot()

    groups = grouped()
    sizes = sorted({k[1] for k in groups if k[0] == "main"})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 3.2), squeeze=False, sharey=True)
    for ax, size in zip(axes[0], sizes):
        for pred, color in (("x", "tab:blue"), ("u", "tab:red")):
            for r in groups.get(("main", size, pred), []):
                c = r["curve"]
                ax.plot(c["step"], c["loss_u"], color=color, lw=1, alpha=0.8,
                        label=f"{pred}-prediction" if r["seed"] == 0 else None)
        ax.set_yscale("log")
        ax.set_title(f"{size} px, patch {PATCH[size]} ({PATCH[size] ** 2} dims/token)", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss_u (MSE of V), every seed")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    helps = {"run": "train and score every cell without a result file (resumable)",
             "one": "train and score one cell (run starts these)"}
    for name in ("run", "one"):
        q = sub.add_parser(name, help=helps[name])
        if name == "one":
            q.add_argument("cell", help="a cell id, e.g. main-112-x-0 or adamw-28-x-1")
        q.add_argument("--work", type=Path, required=True, help="run folders and logs")
        q.add_argument("--steps", type=int, default=2000, help="training steps per cell (default: 2000)")
        q.add_argument("--seeds", type=int, default=2, help="seeds per cell (default: 2)")
        q.add_argument("--sizes", type=int, nargs="+", default=[112, 28, 56], choices=sorted(PATCH),
                       help="input sizes of the main study, each with SIZE/4 px patches (default: 112 28 56)")
        q.add_argument("--threads", type=int, default=1, help="torch threads per cell")
        if name == "run":
            q.add_argument("--jobs", type=int, default=2, help="cells at once")
            q.add_argument("--only", nargs="*", help="cell id prefixes")
    q = sub.add_parser("table", help="the Markdown tables of the results in benchmarks/results/cpu/claims")
    q.add_argument("--write", type=Path, metavar="DOC", nargs="?", const=ROOT / "docs" / "claims.md",
                   help="put them between DOC's `<!-- claims.py table: NAME -->` markers instead of printing "
                        "(default DOC: docs/claims.md)")
    q = sub.add_parser("figure", help="one image per class, x against u, per size (seed 0, guided, one step)")
    q.add_argument("--work", type=Path, required=True, help="the run folders of `run`")
    q.add_argument("--out", type=Path, default=ROOT / "docs" / "claims.png")
    q = sub.add_parser("curves", help="the training loss curves, x against u, per size")
    q.add_argument("--out", type=Path, default=ROOT / "docs" / "claims_curves.png")
    args = p.parse_args()
    {"run": run, "one": one, "table": table, "figure": figure, "curves": curves}[args.what](args)


if __name__ == "__main__":
    main()
