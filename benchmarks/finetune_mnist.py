"""What starting from weights is worth (``pmf train --init``), measured through the real command line.

pMF-MNIST/7 is trained ``--pretrain`` steps on digits 0-4 (an image folder of gray PNGs, classes d0..d4), then
on digits 5-9 (classes d5..d9, the same five class slots) from those weights against the same command from
scratch. Checkpoints are sampled at omega 3 on [0.1, 0.8], 100 per class, and judged by the offline score's digit
classifier (``pmf.evaluation.offline_score``; folder class i read as digit 5 + i): accuracy and the Frechet ratio (the
generated
images' Frechet distance over that of per-class mean images; below 1 is better than blurry means).

    python benchmarks/finetune_mnist.py --work /tmp/ft --out benchmarks/results/cpu/finetune_mnist.json

Other arms (``--arm``): ``vhead-fresh`` (the pretrained model exported in the release format, u-head only, and
fine-tuned with ``--init-v-head fresh`` and ``copy``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ["--omega", "3", "--interval", "0.1:0.8", "--per-class", "100", "--no-png", "--no-progress"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_folders(root: Path) -> tuple[Path, Path]:
    """MNIST-5k's train split as gray PNGs: LOW/d0..d4 and HIGH/d5..d9."""
    sys.path.insert(0, str(ROOT / "src"))
    from pmf.data import load_builtin

    data = load_builtin("mnist-5k", split="train")
    low, high = root / "LOW", root / "HIGH"
    if not (high / "d9").is_dir():
        for i, (img, label) in enumerate(zip(data.images, data.labels)):
            folder = (low if label < 5 else high) / f"d{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0], mode="L").save(folder / f"{i:05d}.png")
    return low, high


def pmf(*args: str, log: Path, wait: bool = True):
    """Run ``pmf ARGS`` (this tree's package, one torch thread); its wall time, or the process if not ``wait``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ pmf {' '.join(args)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "pmf.cli", *args], env=env, stdout=f, stderr=f)
    if not wait:
        return proc
    if proc.wait():
        raise SystemExit(f"pmf {' '.join(args)} failed; see {log}")
    return time.perf_counter() - t0


def run_seconds(run: Path) -> float:
    """Training seconds of a run from its metrics (a resumed run restarts the clock: the parts are summed)."""
    times = [json.loads(row)["time"] for row in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(a for a, b in zip(times, times[1:] + [0.0]) if b < a)


def score(ckpt: Path, work: Path, log: Path) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from pmf.evaluation.offline_score import offline_scores

    out = work / "samples" / f"{ckpt.parent.parent.name}_{ckpt.stem}"
    pmf("sample", "--checkpoint", str(ckpt), "--out", str(out), *SAMPLE, log=log)
    s = np.load(out / "samples.npz")
    res = offline_scores(s["images"], s["labels"] + 5, verbose=False)
    return {"accuracy": res["accuracy"], "frechet": res["frechet"],
            "frechet_ratio": res["frechet"] / res["frechet_class_means"], "samples": str(out / "samples.npz")}


def train_and_score(arms: dict[str, list[str]], steps: int, work: Path, log: Path, every: int,
                    scored: dict) -> dict:
    """Train the arms side by side (one thread each), then score every checkpoint of each not in ``scored``."""
    procs, results = {}, {}
    t0 = time.perf_counter()
    for name, args in arms.items():  # a run of fewer steps continues (constant rate: the same as one long run)
        again = ["--overwrite"]
        if (work / name / "checkpoints").is_dir():  # a run started with --init continues from its config
            again = ["--resume", "auto"] + (["--config", str(work / name / "config.json")] if "--init" in args else [])
            args = [a for a in args if a != "--init" and not a.endswith(".pt")]
        procs[name] = pmf("train", "--recipe", "mnist", "--steps", str(steps), "--out", str(work / name),
                          "--ckpt-every", str(every), "--keep-last", "20", "--sample-every", "0", "--no-progress",
                          *again, *args, log=log, wait=False)
    for name, proc in procs.items():
        if proc.wait():
            raise SystemExit(f"training {name} failed; see {log}")
    wall = time.perf_counter() - t0
    for name in arms:
        run = work / name
        points = {int(k): v for k, v in (scored.get(name) or {}).get("points", {}).items()}
        for ckpt in sorted((run / "checkpoints").glob("step_*.pt")):
            step = int(ckpt.stem.split("_")[1])
            if step in points:
                continue
            points[step] = score(ckpt, work, log)
            print(f"{name} step {step}: {points[step]}", flush=True)
        before = (scored.get(name) or {}).get("side_by_side_wall_seconds", 0.0)
        results[name] = {"train_seconds": run_seconds(run), "side_by_side_wall_seconds": before + wall,
                         "steps": steps, "points": points}
    return results


def figure(results: dict, step: int, path: Path, per_row: int = 10) -> None:
    """Fine-tuned (top five rows) vs scratch (bottom five) at ``step``: one row per class d5..d9."""
    rows = []
    for arm in ("finetuned", "scratch"):
        s = np.load(results[arm]["points"][step]["samples"])
        for c in range(5):
            imgs = s["images"][s["labels"] == c][:per_row, ..., 0]
            rows.append(np.concatenate(list(imgs), axis=1))
        rows.append(np.full((4, rows[-1].shape[1]), 255, np.uint8))
    Image.fromarray(np.concatenate(rows[:-1], axis=0)).resize((per_row * 56, 10 * 56 + 8), Image.NEAREST).save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--work", default="/tmp/pmf-finetune-mnist")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu" / "finetune_mnist.json"))
    p.add_argument("--pretrain", type=int, default=300)
    p.add_argument("--steps", type=int, default=300, help="steps on digits 5-9 (checkpoints every --every)")
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--arm", default="main", choices=["main", "vhead"])
    p.add_argument("--figure", default=str(ROOT / "docs" / "finetune_mnist.png"))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    low, high = write_folders(work / "data")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.update({"cpu": cpu_model(), "threads": os.cpu_count(), "sampling": "omega 3, interval 0.1:0.8, 100/class"})
    pre = work / "pretrain"
    if not (pre / "checkpoints" / f"step_{args.pretrain:08d}.pt").is_file():  # else: an interrupted run continues
        resume = ["--resume", "auto"] if (pre / "checkpoints").is_dir() else ["--overwrite"]
        pmf("train", "--recipe", "mnist", "--data", str(low), "--steps", str(args.pretrain), "--out", str(pre),
            "--sample-every", "0", "--no-progress", "--ckpt-every", str(args.pretrain), *resume, log=log)
    results["pretrain"] = {"steps": args.pretrain, "train_seconds": run_seconds(pre)}
    ckpt = pre / "checkpoints" / f"step_{args.pretrain:08d}.pt"
    arms = {"finetuned": ["--data", str(high), "--init", str(ckpt)], "scratch": ["--data", str(high)]}
    if args.arm == "vhead":
        release = work / "pretrain_release.pt"
        pmf("export", str(ckpt), str(release), log=log)
        arms = {f"vhead_{h}": ["--data", str(high), "--init", str(release), "--init-v-head", h]
                for h in ("copy", "fresh")}
    results.update(train_and_score(arms, args.steps, work, log, args.every, results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    if args.arm == "main":
        figure(results, 150, Path(args.figure))
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
