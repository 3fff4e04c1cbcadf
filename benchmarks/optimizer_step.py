"""Time of one optimiser step on a pMF network: our Muon (+ Adam side) with the per-parameter loop against
the batched one (``Muon(foreach=True)``: Newton-Schulz on stacks of same-shape matrices, multi-tensor
momentum and Adam), and torch's AdamW (foreach) for reference.

Each optimiser has its own copy of the model with the same weights and the same random gradients; the three
steps are timed alternately (median of ``--repeats``). ``max_abs_diff`` is the largest difference between
the weights after one step of each Muon implementation from the same start.

    python benchmarks/optimizer_step.py                      # pMF-S/4 on the CPU, 1 thread
    python benchmarks/optimizer_step.py --preset pMF-B/16 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import copy

import torch

import common
from pmf import build_model
from pmf.training.config import OptimConfig
from pmf.training.optim import build_optimizer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="pMF-S/4")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result to this file")
    return p.parse_args(argv)


def with_grads(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)
    return model


def main(argv=None) -> dict:
    args = parse_args(argv)
    dev = common.setup(args.device, args.threads)
    torch.manual_seed(args.seed)
    base = build_model(args.preset).to(dev)
    models = {k: with_grads(copy.deepcopy(base), args.seed) for k in ("loop", "batched", "adamw")}
    opts = {
        "loop": build_optimizer(models["loop"], OptimConfig(name="muon", foreach=False)),
        "batched": build_optimizer(models["batched"], OptimConfig(name="muon", foreach=True)),
        "adamw": torch.optim.AdamW(models["adamw"].parameters(), lr=1e-3, foreach=True),
    }
    opts["loop"].step()
    opts["batched"].step()
    common.sync(dev)
    diff = max((a - b).abs().max().item() for a, b in zip(models["loop"].parameters(),
                                                           models["batched"].parameters()))

    times = common.time_interleaved({k: o.step for k, o in opts.items()}, dev, warmup=args.warmup,
                                    repeats=args.repeats)
    muon = opts["batched"].param_groups[0]["params"]
    result = {
        "benchmark": "optimizer_step",
        "preset": args.preset, "device": common.device_name(dev),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None, "timer": common.timer_name(dev),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in base.parameters()), "tensors": len(list(base.parameters())),
        "muon_matrices": len(muon), "muon_shapes": len({tuple(p.shape) for p in muon}),
        "muon_loop_s": round(times["loop"], 5), "muon_batched_s": round(times["batched"], 5),
        "speedup": round(times["loop"] / times["batched"], 3),
        "adamw_foreach_s": round(times["adamw"], 5),
        "max_abs_diff": diff,
    }
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
