"""Time and peak memory of one pMF training step against a plain forward+backward of the same network.

The pMF step is ``pmf_loss`` (guidance target, du/dt, both heads) plus ``backward``; the plain step is
one forward of both heads on the same batch, an MSE against the images, and ``backward``. Neither
includes the optimiser step, which is timed on its own (``optimizer_step_s``, AdamW, fused on CUDA).
Both are timed alternately in one process (median of ``--repeats``); peak memory is what the step
needs above the weights and the batch (see ``common.py``). FLOPs are counted with
``torch.utils.flop_counter`` (2 per multiply-add, every executed matmul, JVP tangents included).

    python benchmarks/train_step.py                          # pMF-S/4 on the CPU
    python benchmarks/train_step.py --preset pMF-B/16 --batch 64 --device cuda --precision bf16 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib

import torch

import common
from pmf import PMFDiT, model_config, objective
from pmf.nn.attention import TANGENT_ATTENTIONS, tangent_attention
from pmf.objective import pmf_loss, sample_draws

JVP_MODES = getattr(objective, "JVP_MODES", ("split", "fused"))

RECIPE = dict(P_mean=0.8, P_std=0.8, data_proportion=0.5, cfg_max=7.0, cfg_beta=1.0, class_dropout_prob=0.1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="pMF-S/4")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", "--dtype", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: autocast with fp32 weights (norms, rotations, softmax and 1/t stay fp32)")
    p.add_argument("--jvp", default=None, choices=JVP_MODES, help="du/dt form (default: pmf_loss's default)")
    p.add_argument("--tangent-attention", default="math", choices=list(TANGENT_ATTENTIONS),
                   help="attention tangent of the inline du/dt form: exact math or the fused Triton kernel")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (plain and pMF steps)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="activation checkpointing of every block (plain and pMF steps)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result to this file")
    p.add_argument("--memory-child", choices=["pmf", "plain"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


class Bench:
    """A model, a batch and fixed draws; ``pmf()`` and ``plain()`` each run one step without the optimiser."""

    def __init__(self, args, dev: torch.device, batch: int):
        torch.manual_seed(args.seed)
        # no value checks: no host syncs inside the timed step
        self.model = PMFDiT(model_config(args.preset), check_values=False,
                            activation_checkpointing=args.grad_checkpointing).to(dev)
        with torch.no_grad():  # non-zero gates and outputs so that every branch carries signal
            for name, p in self.model.named_parameters():
                if name.endswith(("attn_scale", "mlp_scale")) or "final_layer.linear.weight" in name:
                    p.normal_(0, 0.05)
        self.net = torch.compile(self.model) if args.compile else self.model
        cfg = self.model.config
        g = torch.Generator(device=dev).manual_seed(args.seed)
        shape = (batch, cfg.in_channels, cfg.input_size, cfg.input_size)
        self.x = torch.rand(shape, generator=g, device=dev) * 2 - 1
        self.y = torch.randint(cfg.num_classes, (batch,), generator=g, device=dev)
        self.draws = sample_draws(self.x, **RECIPE, noise_scale=cfg.noise_scale, generator=g)
        d = self.draws
        self.z = (1 - d.t.view(-1, 1, 1, 1)) * self.x + d.t.view(-1, 1, 1, 1) * d.noise
        self.num_classes = cfg.num_classes
        self.jvp = {} if args.jvp is None else {"jvp": args.jvp}
        self.tangent_attention = args.tangent_attention
        self.autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if args.precision == "bf16" \
            else contextlib.nullcontext

    def pmf(self):
        self.model.zero_grad(set_to_none=True)
        with self.autocast(), tangent_attention(self.tangent_attention):
            out = pmf_loss(self.net, self.x, self.y, self.draws, num_classes=self.num_classes, **self.jvp)
        out.loss.backward()

    def fresh(self, kind: str):
        """The step ``kind`` ("pmf" or "plain") with no gradients held before it."""
        self.model.zero_grad(set_to_none=True)
        return getattr(self, kind)

    def plain(self):
        self.model.zero_grad(set_to_none=True)
        d = self.draws
        with self.autocast():
            out = self.net(self.z, d.t - d.r, d.omega, d.t_min, d.t_max, self.y)
            loss = (out.x_u.float() - self.x).pow(2).mean() + (out.x_v.float() - self.x).pow(2).mean()
        loss.backward()


def child_peak(args) -> int:
    """One peak-memory measurement in this fresh process."""
    dev = common.setup(args.device, args.threads)
    small = Bench(args, dev, 2)
    getattr(small, args.memory_child)()  # warm-up: thread pools, kernel caches, lazy state
    small.model.zero_grad(set_to_none=True)
    del small
    bench = Bench(args, dev, args.batch)
    return common.measure_peak(getattr(bench, args.memory_child), dev)


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def run(args, argv) -> dict:
    dev = common.setup(args.device, args.threads)
    bench = Bench(args, dev, args.batch)
    times = common.time_interleaved({"pmf": bench.pmf, "plain": bench.plain}, dev, warmup=args.warmup,
                                    repeats=args.repeats)

    opt = torch.optim.AdamW(bench.model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    bench.pmf()
    opt_time = common.time_interleaved({"opt": opt.step}, dev, warmup=1, repeats=args.repeats)["opt"]

    peaks = {"pmf": None, "plain": None}
    if not args.no_memory:
        peaks = common.memory_peaks(peaks, bench.fresh, dev, __file__, argv)

    flops = {"pmf": None, "plain": None}
    if not args.no_flops and not args.compile:
        bench.tangent_attention = "math"  # the FLOP counter does not see Triton kernels
        flops = {k: count_flops(getattr(bench, k)) for k in flops}
    peak = common.peak_flops(dev, args.precision)

    def mfu(kind):
        return None if peak is None or flops[kind] is None else round(flops[kind] / times[kind] / peak, 4)

    result = {
        "benchmark": "train_step",
        "preset": args.preset, "batch": args.batch, "device": common.device_name(dev),
        "precision": args.precision, "jvp": args.jvp or "default",
        "tangent_attention": args.tangent_attention, "compile": args.compile,
        "grad_checkpointing": args.grad_checkpointing,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None, "timer": common.timer_name(dev),
        "torch": torch.__version__,
        "pmf_step_s": round(times["pmf"], 5), "plain_step_s": round(times["plain"], 5),
        "time_ratio": round(times["pmf"] / times["plain"], 3),
        "optimizer_step_s": round(opt_time, 5),
        "images_per_s": round(args.batch / times["pmf"], 2),
        "images_per_s_plain": round(args.batch / times["plain"], 2),
        "pmf_peak_mib": common.mib(peaks["pmf"]), "plain_peak_mib": common.mib(peaks["plain"]),
        "memory_ratio": None if peaks["plain"] is None else round(peaks["pmf"] / peaks["plain"], 3),
        "pmf_gflop_per_image": None if flops["pmf"] is None else round(flops["pmf"] / args.batch / 1e9, 3),
        "plain_gflop_per_image": None if flops["plain"] is None else round(flops["plain"] / args.batch / 1e9, 3),
        "peak_tflops": None if peak is None else peak / 1e12,
        "mfu": mfu("pmf"), "mfu_plain": mfu("plain"),
    }
    return common.write_json(args.json, result)


def main(argv=None) -> dict:
    return common.benchmark_main(argv, parse_args, child_peak, run)


if __name__ == "__main__":
    main()
