"""An unconditional model against a class-conditional one at equal steps, through the real command line.

pMF-MNIST/7 (the mnist recipe) is trained ``--steps`` steps on MNIST-5k's train split twice, side by side: on a
folder of its digits as loose PNGs (no class sub-folders: one class) and on ``mnist-5k`` (ten classes). Each
model is sampled 1,000 times (the pooled model: its one class; the conditional one: 100 per digit) at omega 1
and at the recipe's omega 3 on [0.1, 0.8], and judged by the offline score (``pmf.evaluation.offline_score``): the
Frechet ratio
is the Frechet distance of the classifier's features to the real test digits over that of the per-class mean
images of 100 real digits of each class (the same reference for both models; below 1 is better than blurry
means).

    python benchmarks/unconditional_mnist.py --work /tmp/uncond --out benchmarks/results/cpu/unconditional_mnist.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from finetune_mnist import ROOT, cpu_model, pmf, run_seconds

SETTINGS = {"omega 1": ["--omega", "1", "--interval", "0:1"], "omega 3 on [0.1, 0.8]": ["--omega", "3",
                                                                                       "--interval", "0.1:0.8"]}


def write_loose(root: Path) -> Path:
    """MNIST-5k's train split as gray PNGs directly in ``root/digits`` (no class sub-folders)."""
    sys.path.insert(0, str(ROOT / "src"))
    from pmf.data import load_builtin

    folder = root / "digits"
    data = load_builtin("mnist-5k", split="train")
    if not folder.is_dir() or len(list(folder.glob("*.png"))) != len(data.labels):
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(data.images):
            Image.fromarray(img[..., 0], mode="L").save(folder / f"{i:05d}.png")
    return folder


def score(ckpt: Path, classes: str, setting: list[str], out: Path, log: Path) -> dict:
    from pmf.evaluation.offline_score import offline_scores

    per_class = "1000" if classes == "0" else "100"
    pmf("sample", "--checkpoint", str(ckpt), "--out", str(out), "--classes", classes, "--per-class", per_class,
        "--no-png", "--no-progress", *setting, log=log)
    images = np.load(out / "samples.npz")["images"]
    balanced = np.repeat(np.arange(10), len(images) // 10)  # the reference mix: 100 real digits of each class
    res = offline_scores(images, balanced, verbose=False)
    return {"frechet": res["frechet"], "frechet_class_means": res["frechet_class_means"],
            "frechet_ratio": res["frechet"] / res["frechet_class_means"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/unconditional_mnist")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    arms = {"pooled": ("0", str(write_loose(work))), "conditional": ("0-9", "mnist-5k")}
    procs = {name: pmf("train", "--recipe", "mnist", "--data", data, "--steps", str(args.steps), "--out",
                       str(work / name), "--ckpt-every", str(args.steps), "--sample-every", "0", "--no-progress",
                       "--workers", "0", "--overwrite", log=log, wait=False) for name, (_, data) in arms.items()}
    for name, proc in procs.items():
        if proc.wait():
            raise SystemExit(f"training {name} failed; see {log}")
    result = {"benchmark": "unconditional_mnist", "cpu": cpu_model(), "steps": args.steps, "arms": {}}
    for name, (classes, data) in arms.items():
        ckpt = work / name / "checkpoints" / f"step_{args.steps:08d}.pt"
        scores = {label: score(ckpt, classes, setting, work / "samples" / f"{name}_{i}", log)
                  for i, (label, setting) in enumerate(SETTINGS.items())}
        result["arms"][name] = {"data": data, "train_seconds": run_seconds(work / name), "scores": scores}
        print(name, json.dumps(scores), flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
