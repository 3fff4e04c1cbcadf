"""Time and peak memory of a pMF training step (pmf_loss + backward) with and without the perceptual terms.

Variants: ``none`` (the pMF objective alone), ``lpips`` (+ LPIPS-VGG16), ``convnext`` (+ ConvNeXt-V2
features) and ``both``. The feature networks have RANDOM weights (``random_init=True``): the cost of a
network does not depend on its weight values, and no weight file is needed. The crops are 224 px as in
training whatever the image size, so the extra cost per sample is nearly constant; only samples with
t < max_t go through the networks (about 2/3 of a batch with the released P_mean 0.8 / P_std 0.8).
Times are medians of calls that alternate between variants; peak memory is what a step needs above the
weights and the batch (on a CPU: in a fresh process per variant, resident set high-water mark after a reset).
A last line times the crop alone (``crop_resize`` of the batch's predicted and clean images, forward and
backward into the prediction), the release's resampling of the whole image per sample.

    python benchmarks/perceptual_cost.py                                   # pMF-Tiny/4, batch 4, CPU
    python benchmarks/perceptual_cost.py --preset pMF-B/16 --batch 32 --device cuda --precision bf16 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

import torch

import common
from pmf import build_model
from pmf.objective import pmf_loss, sample_draws
from pmf.perceptual import PerceptualConfig, build_perceptual, crop_resize, sample_crop_boxes

RECIPE = dict(P_mean=0.8, P_std=0.8, data_proportion=0.5, cfg_max=7.0, cfg_beta=1.0, class_dropout_prob=0.1)
VARIANTS = {"none": (False, False), "lpips": (True, False), "convnext": (False, True), "both": (True, True)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="pMF-Tiny/4")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast")
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--max-t", type=float, default=0.8, help="the threshold of both terms (B/16's 0.8)")
    p.add_argument("--variants", default="none,lpips,convnext,both")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result to this file")
    p.add_argument("--memory-child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    return p.parse_args(argv)


class Bench:
    """A model, a batch, fixed draws and one perceptual callable per variant."""

    def __init__(self, args, dev: torch.device, variants: list[str]):
        torch.manual_seed(args.seed)
        self.model = build_model(args.preset).to(dev)
        with torch.no_grad():  # non-zero gates and outputs so that x_pred carries signal
            for name, p in self.model.named_parameters():
                if name.endswith(("attn_scale", "mlp_scale")) or "final_layer.linear.weight" in name:
                    p.normal_(0, 0.05)
        cfg = self.model.config
        g = torch.Generator(device=dev).manual_seed(args.seed)
        shape = (args.batch, cfg.in_channels, cfg.input_size, cfg.input_size)
        self.x = torch.rand(shape, generator=g, device=dev) * 2 - 1
        self.y = torch.randint(cfg.num_classes, (args.batch,), generator=g, device=dev)
        self.draws = sample_draws(self.x, **RECIPE, noise_scale=cfg.noise_scale, generator=g)
        self.kept = int((self.draws.t < args.max_t).sum())
        self.num_classes = cfg.num_classes
        self.autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if args.precision == "bf16" \
            else contextlib.nullcontext
        self.perceptual = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-weights warning: intended here
            for name in variants:
                lp, cn = VARIANTS[name]
                pc = PerceptualConfig(lpips=lp, convnext=cn, crop_size=args.crop_size, max_t=args.max_t)
                self.perceptual[name] = build_perceptual(pc, dev, random_init=True)

    def step(self, name: str) -> None:
        self.model.zero_grad(set_to_none=True)
        fn = self.perceptual[name]
        if fn is not None:
            fn.manual_seed(0)  # the same crops on every call
        with self.autocast():
            out = pmf_loss(self.model, self.x, self.y, self.draws, num_classes=self.num_classes, perceptual=fn)
        out.loss.backward()

    def crop(self, size: int) -> None:
        """The loss's crops of the whole batch: prediction (with gradient) and clean image, then backward."""
        pred = self.x.detach().requires_grad_()
        boxes = sample_crop_boxes(pred.shape[0], pred.shape[2], pred.shape[3], generator=torch.Generator())
        with self.autocast():
            a, b = crop_resize(pred, boxes, size), crop_resize(self.x, boxes, size)
        (a * b).sum().backward()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_step_peak(fn) -> int:
    """Bytes a CPU call needs above the resident set before it. Building the networks can peak higher than
    a step (random init makes temporaries), so the process's high-water mark is reset first (Linux
    clear_refs); where that is not allowed, fall back to the lifetime peak of ``common.measure_peak``."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return common.measure_peak(fn, torch.device("cpu"))
    base = _status_kib("VmRSS")
    fn()
    return max(_status_kib("VmHWM") - base, 0) * 1024


def child_peak(args) -> int:
    dev = common.setup(args.device, args.threads)
    bench = Bench(args, dev, [args.memory_child])
    bench.step(args.memory_child)  # warm-up: allocator pools, lazy inits
    step = lambda: bench.step(args.memory_child)  # noqa: E731
    return common.measure_peak(step, dev) if dev.type == "cuda" else cpu_step_peak(step)


def run(args, argv) -> None:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    dev = common.setup(args.device, args.threads)
    bench = Bench(args, dev, variants)
    times = common.time_interleaved({v: (lambda v=v: bench.step(v)) for v in variants}, dev,
                                    warmup=args.warmup, repeats=args.repeats)
    crop_s = common.time_interleaved({"crop": lambda: bench.crop(args.crop_size)}, dev, warmup=args.warmup,
                                     repeats=args.repeats)["crop"]
    peaks = {} if args.no_memory else common.memory_peaks(variants, lambda v: lambda: bench.step(v), dev, __file__,
                                                          argv)

    base_t, base_m = times.get("none"), peaks.get("none")
    rows = []
    for v in variants:
        rows.append(dict(variant=v, step_s=round(times[v], 4),
                         time_ratio=round(times[v] / base_t, 2) if base_t else None,
                         peak_mib=common.mib(peaks.get(v)),
                         memory_ratio=round(peaks[v] / base_m, 2) if base_m and v in peaks else None))
    result = dict(preset=args.preset, batch=args.batch, samples_through_networks=bench.kept,
                  crop_size=args.crop_size, crop_s=round(crop_s, 5), max_t=args.max_t, precision=args.precision,
                  device=common.device_name(dev), torch=torch.__version__,
                  weights="random (cost does not depend on weight values)", rows=rows)
    print(f"{args.preset}, batch {args.batch} ({bench.kept} with t < {args.max_t} through the networks), "
          f"crop {args.crop_size}, {args.precision}, {result['device']}")
    print(f"{'variant':<10}{'step s':>10}{'x none':>9}{'peak MiB':>11}{'x none':>9}")
    for r in rows:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(f"{r['variant']:<10}{fmt(r['step_s'], '.3f'):>10}{fmt(r['time_ratio'], '.1f'):>9}"
              f"{fmt(r['peak_mib'], '.0f'):>11}{fmt(r['memory_ratio'], '.1f'):>9}")
    print(f"crop alone (batch {args.batch}, 2 images, forward + backward): {crop_s * 1e3:.2f} ms")
    if args.json:
        common.write_json(args.json, result)


def main(argv=None) -> None:
    return common.benchmark_main(argv, parse_args, child_peak, run)


if __name__ == "__main__":
    main()
