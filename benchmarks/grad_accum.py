"""Step time and peak memory of one training step (``pmf.training.step.train_step``: draws, loss, backward, optimiser,
EMAs)
at one batch size, in one pass and in N micro-batches (``--grad-accum N``).

The steps of every N are timed alternately in one process (median of ``--repeats``, process CPU time on a CPU);
the peak memory of each is measured in a fresh process after one warm-up step (so the optimiser state exists
and only the step's own memory is counted, see ``common.py``).

    python benchmarks/grad_accum.py --json benchmarks/results/cpu/grad_accum_mnist7_b64.json
"""

from __future__ import annotations

import argparse

import torch

import common
from pmf.model_configs import model_config
from pmf.parallel import process as D
from pmf.training.build import build
from pmf.training.config import TrainConfig
from pmf.training.recipes import recipe
from pmf.training.step import train_step


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="mnist", help="training recipe whose model, batch and optimiser are used")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the recipe's)")
    p.add_argument("--accum", default="1,2,4,8", help="micro-batch counts to compare, comma-separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


class Stepper:
    """A model of the recipe with its optimiser and EMAs, one fixed batch, and ``step(n)``: one training step in
    ``n`` micro-batches."""

    def __init__(self, args, dev: torch.device):
        data = recipe(args.recipe).to_dict()
        data.update(device=dev.type, sample=dict(every=0), **({"batch_size": args.batch} if args.batch else {}))
        self.cfg = TrainConfig.from_dict(data)
        self.mcfg = model_config(self.cfg.arch, **self.cfg.model_overrides)
        self.parts = build(self.cfg, self.mcfg, D.DistInfo(device=dev))
        g = torch.Generator().manual_seed(0)
        m, b = self.mcfg, self.cfg.batch_size
        self.x = (torch.rand(b, m.in_channels, m.input_size, m.input_size, generator=g) * 2 - 1).to(dev)
        self.y = torch.randint(m.num_classes, (b,), generator=g).to(dev)
        self.count = 0

    def step(self, n: int) -> None:
        self.cfg.grad_accum = n
        train_step(self.parts, self.cfg, self.mcfg, self.count, 0, self.x, self.y)
        self.count += 1


def child_peak(args) -> int:
    dev = common.setup(args.device, args.threads)
    stepper = Stepper(args, dev)
    stepper.step(args.memory_child)  # warm-up: optimiser state, thread pools, allocator
    return common.measure_peak(lambda: stepper.step(args.memory_child), dev)


def run(args, argv) -> dict:
    dev = common.setup(args.device, args.threads)
    counts = [int(n) for n in args.accum.split(",")]
    stepper = Stepper(args, dev)
    times = common.time_interleaved({n: (lambda n=n: stepper.step(n)) for n in counts}, dev, warmup=args.warmup,
                                    repeats=args.repeats)
    peaks = {} if args.no_memory else common.memory_peaks(counts, lambda n: lambda: stepper.step(n), dev, __file__,
                                                          argv)
    base_t, base_m = times[counts[0]], peaks.get(counts[0])
    rows = [{"grad_accum": n, "micro_batch": stepper.cfg.batch_size // n, "step_s": round(times[n], 4),
             "time_ratio": round(times[n] / base_t, 3), "peak_mib": common.mib(peaks.get(n)),
             "memory_ratio": None if base_m is None else round(peaks[n] / base_m, 3)} for n in counts]
    result = {"benchmark": "grad_accum", "recipe": args.recipe, "preset": stepper.cfg.arch,
              "batch": stepper.cfg.batch_size, "optimizer": stepper.cfg.optim.name, "device": common.device_name(dev),
              "threads": torch.get_num_threads() if dev.type == "cpu" else None, "timer": common.timer_name(dev),
              "torch": torch.__version__, "rows": rows}
    return common.write_json(args.json, result)


def main(argv=None) -> dict:
    return common.benchmark_main(argv, parse_args, child_peak, run)


if __name__ == "__main__":
    main()
