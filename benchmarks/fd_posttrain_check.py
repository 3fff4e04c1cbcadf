"""The CPU acceptance check of FD-loss post-training (docs/posttraining.md): 1,000 one-step samples of a base
checkpoint and of its post-trained checkpoints, each at its recorded setting, judged by an independent digit
classifier trained here (not the ``offline`` representation the loss used): a two-block CNN (32 and 64 wide)
with a 128-wide penultimate layer and dropout, seed 1, 8 epochs of Adam 1e-3 on MNIST-5k's training split with
random shifts of up to 2 pixels.

Figures per checkpoint: class accuracy, the Frechet distance of its penultimate features to the real test
split, the same for real training digits (floor) and class-mean images, and the offline score's figures. The
check: FD(post) <= 0.6 FD(base) at accuracy >= 0.9.

    python benchmarks/fd_posttrain_check.py --base /work/runs/demo --post OUT [OUT2 ...] \\
        --out benchmarks/results/cpu/fd_posttrain.json"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import cpu_model


class Judge(nn.Module):
    """Two conv blocks (32, 64 wide, 5x5 and 3x3), the 64 x 7 x 7 maps flattened into a 128-wide penultimate
    layer with dropout; input [B, 1, 28, 28] in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())  # (B, 3136)
        self.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def features(self, x):
        return self.fc(self.conv(x))

    def forward(self, x):
        return self.head(self.features(x))


def to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def train_judge(epochs: int = 8, seed: int = 1) -> tuple[Judge, float]:
    from pmf.data import load_builtin

    train, test = load_builtin("mnist-5k", split="train"), load_builtin("mnist-5k", split="test")
    torch.manual_seed(seed)
    model, gen = Judge(), torch.Generator().manual_seed(seed)
    x, y = to_input(train.images), torch.from_numpy(train.labels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(to_input(test.images)).argmax(1).numpy() == test.labels).mean()
    return model, float(acc)


@torch.no_grad()
def judge(model: Judge, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = to_input(images)
    f = torch.cat([model.features(b) for b in x.split(500)])
    return model.head(f).argmax(1).numpy(), f.double().numpy()


def samples(spec: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    from pmf.checkpoints.load import load_checkpoint
    from pmf.sampling import generate

    loaded = load_checkpoint(spec)
    labels = torch.arange(n) % 10
    images = np.concatenate([b.numpy() for _, b in generate(loaded, range(n), labels, seed=seed, batch_size=250,
                                                             progress=False)])
    return images, labels.numpy(), loaded.setting.describe()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the base checkpoint or run folder")
    p.add_argument("--post", nargs="+", required=True, help="post-trained checkpoints or run folders")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", default=None)
    p.add_argument("--figure", default=None, help="PNG: the first 100 samples of each checkpoint side by side "
                   "(one column per class)")
    args = p.parse_args()
    torch.set_num_threads(1)
    from pmf.data import load_builtin
    from pmf.evaluation.frechet import frechet_distance_features
    from pmf.evaluation.offline_score import class_means, matched_real, offline_scores
    from pmf.images import make_grid, save_image

    t0 = time.perf_counter()
    model, test_acc = train_judge()
    print(f"independent classifier: test accuracy {test_acc:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    train, test = load_builtin("mnist-5k", split="train"), load_builtin("mnist-5k", split="test")
    _, ref = judge(model, test.images)
    labels = np.arange(args.n) % 10
    rows, grids = {}, []
    for name, imgs in (("real_floor", matched_real(train.images, train.labels, labels)),
                       ("class_means", class_means(train.images, train.labels, labels))):
        pred, f = judge(model, imgs)
        rows[name] = {"accuracy": float((pred == labels).mean()), "frechet": frechet_distance_features(f, ref)}
    for spec in [args.base, *args.post]:
        images, lab, setting = samples(spec, args.n, args.seed)
        grids.append(make_grid(images[:100], 10))
        pred, f = judge(model, images)
        off = offline_scores(images, lab, verbose=False)
        rows[spec] = {"setting": setting, "accuracy": float((pred == lab).mean()),
                      "frechet": frechet_distance_features(f, ref), "offline_accuracy": off["accuracy"],
                      "offline_frechet": off["frechet"]}
    if args.figure:
        gap = np.full((grids[0].shape[0], 8, grids[0].shape[2]), 255, np.uint8)
        save_image(np.concatenate([x for g in grids for x in (g, gap)][:-1], axis=1), args.figure, scale=2)
    base = rows[args.base]["frechet"]
    for spec in args.post:
        r = rows[spec]
        r["frechet_over_base"] = r["frechet"] / base
        r["passes"] = bool(r["frechet_over_base"] <= 0.6 and r["accuracy"] >= 0.9)
    for k, r in rows.items():
        r["frechet_over_class_means"] = r["frechet"] / rows["class_means"]["frechet"]
        print(f"{k}: " + ", ".join(f"{a} {b:.4g}" if isinstance(b, float) else f"{a} {b}" for a, b in r.items()),
              flush=True)
    result = {"cpu": cpu_model(), "threads": 1, "independent_test_accuracy": test_acc, "n": args.n,
              "seed": args.seed, "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if all(rows[s]["passes"] for s in args.post) else 1


if __name__ == "__main__":
    sys.exit(main())
