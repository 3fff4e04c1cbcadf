"""Label dropout on the first rows (the release: those are the r = t rows) against per-sample dropout, on the
MNIST recipe through the real command line, scored by the offline digit classifier at omega 1 and 3.

    python benchmarks/label_dropout.py --steps 400 --out benchmarks/results/cpu/label_dropout.json"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_mnist import ROOT, cpu_model, pmf  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--work", default="/tmp/pmf-label-dropout")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu" / "label_dropout.json"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--per-class", type=int, default=100)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from pmf.evaluation.offline_score import offline_scores

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    results = {"cpu": cpu_model(), "threads": os.cpu_count(), "steps": args.steps, "data": "mnist-5k",
               "per_class": args.per_class}
    for mode in ("first-rows", "per-sample"):
        run = work / mode
        seconds = pmf("train", "--recipe", "mnist", "--steps", str(args.steps), "--out", str(run), "--class-dropout",
                      mode, "--sample-every", "0", "--ckpt-every", str(args.steps), "--no-progress", "--overwrite",
                      log=log)
        results[mode] = {"train_seconds": seconds}
        for omega in ("1", "3"):
            out = work / f"{mode}_omega{omega}"
            pmf("sample", "--checkpoint", str(run), "--out", str(out), "--omega", omega, "--interval", "0.1:0.8",
                "--per-class", str(args.per_class), "--no-png", "--no-progress", log=log)
            s = np.load(out / "samples.npz")
            r = offline_scores(s["images"], s["labels"], verbose=False)
            results[mode][f"omega{omega}"] = {"accuracy": r["accuracy"], "frechet": r["frechet"],
                                              "frechet_ratio": r["frechet"] / r["frechet_class_means"]}
            print(mode, omega, results[mode][f"omega{omega}"], flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
