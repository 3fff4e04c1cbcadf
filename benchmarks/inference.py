"""One-step sampling throughput and peak memory: our fast path against a re-creation of the released
PyTorch port's computation (fp32, einsum softmax attention, complex RoPE; ``benchmarks/release_port.py``), on the
same weights in the same process, with the max abs difference between their images (in [-1, 1]).

Our path: SDPA attention, the u-head only, ``inference_mode``, optionally bf16 autocast
(``--precision bf16``), ``torch.compile`` with frozen weights and one graph per batch size (``--compile``)
and CUDA graphs (``--cuda-graphs``, GPU only): ``pmf.sampling.prepare_sampler``, as ``pmf sample --compile``.
Both paths are timed alternately (median of ``--repeats``).

``--backends eager,compiled,onnx,release`` times any of: our eager network, our compiled one, the generator
exported to ONNX (``pmf.export.onnx_export``, fp32) run in onnxruntime with ``--threads`` intra-op threads, and the
release re-creation; each row gives every backend's seconds, its speed-up over eager and its max abs
difference from eager. ``--clock wall`` times wall-clock seconds (onnxruntime's threads spin while they wait,
which a CPU-time clock would count as work).

    python benchmarks/inference.py                                 # pMF-S/4, CPU, fp32
    python benchmarks/inference.py --preset pMF-B/16 --device cuda --precision bf16 --compile \\
        --batch 256 --sweep 1,16,64,256 --json inference_b16.json
    python benchmarks/inference.py --preset pMF-B/16 --threads 2 --clock wall --no-memory \\
        --backends eager,compiled,onnx,release --batch 4 --sweep 1,8,64
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

import common
from pmf import PMFDiT, build_model, load_release_state_dict, model_config, release_state_dict
from pmf.sampling import precision_context, prepare_sampler, sample
from release_port import ReleasePortNet, release_generate

GUIDANCE = dict(omega=7.5, t_min=0.1, t_max=0.8)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="pMF-S/4")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--sweep", default=None, help="comma-separated batch sizes to time as well, e.g. 1,16,64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", "--dtype", default="fp32", choices=["fp32", "bf16"],
                   help="our path only; the release re-creation always runs in fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile our network")
    p.add_argument("--cuda-graphs", action="store_true", help="with --compile on CUDA: CUDA-graph replay")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--backends", default=None, help="comma-separated, of: eager, compiled, onnx, release (default: "
                   "ours (eager, or compiled with --compile) against release)")
    p.add_argument("--clock", choices=["cpu", "wall"], default=None, help="default: wall on CUDA, process CPU time "
                   "on a CPU")
    p.add_argument("--memory-child", choices=["ours", "release"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def nontrivial_model(preset: str, seed: int):
    """A u-head network of ``preset`` with random weights that every block uses: pMF's initialisation zeroes the
    block gates and the output layer, which would make every image the same."""
    torch.manual_seed(seed)
    model = build_model(preset, v_head=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn_scale", "mlp_scale")) or "final_layer.linear.weight" in name:
                p.normal_(0, 0.05)
    return model.eval()


class Bench:
    """Both generators on the same (random, non-trivial) weights and the same noise and labels."""

    def __init__(self, args, dev: torch.device):
        src = nontrivial_model(args.preset, args.seed)
        sd = release_state_dict(src)
        self.cfg = cfg = src.config
        # no value checks: no host syncs in the timed call
        net = PMFDiT(model_config(args.preset, v_head=False), check_values=False)
        self.model = load_release_state_dict(net, sd).to(dev).eval()
        self.release = ReleasePortNet(cfg, eval_mode=True).load_release(sd).to(dev).eval()
        self.net = self.model
        if args.compile:  # what `pmf sample --compile [--cuda-graphs]` runs: frozen weights, static shapes
            self.net = prepare_sampler(self.model, compile=True, cuda_graphs=args.cuda_graphs and dev.type == "cuda")
        self.autocast = precision_context(args.precision, dev)  # as `pmf sample --precision`
        self.dev, self.seed = dev, args.seed
        backends = (args.backends or "").split(",")
        if "compiled" in backends:
            self.compiled = prepare_sampler(self.model, compile=True, cuda_graphs=args.cuda_graphs)
        if "onnx" in backends:
            self.ort = onnx_generator(self.model, args.preset, args.threads)

    def backend(self, name: str):
        """(noise, labels) -> images in [-1, 1] for a backend of ``--backends``."""
        if name == "eager":
            return lambda noise, labels: self.run(self.model, noise, labels)
        if name == "compiled":
            return lambda noise, labels: self.run(self.compiled, noise, labels)
        if name == "onnx":
            return lambda noise, labels: self.ort(noise.cpu() / self.cfg.noise_scale, labels.cpu(), *GUIDANCE.values())
        return {"ours": self.ours, "release": self.released}[name]

    def run(self, net, noise, labels) -> torch.Tensor:
        with torch.inference_mode(), self.autocast:
            return sample(net, noise, labels, **GUIDANCE).float()

    def inputs(self, batch: int):
        c = self.cfg
        g = torch.Generator(device=self.dev).manual_seed(self.seed + batch)
        noise = c.noise_scale * torch.randn(batch, c.in_channels, c.input_size, c.input_size, generator=g,
                                            device=self.dev)
        labels = torch.randint(c.num_classes, (batch,), generator=g, device=self.dev)
        return noise, labels

    def ours(self, noise, labels) -> torch.Tensor:
        with torch.inference_mode(), self.autocast:
            return sample(self.net, noise, labels, **GUIDANCE).float()

    def released(self, noise, labels) -> torch.Tensor:
        return release_generate(self.release, noise, labels, **GUIDANCE)


def onnx_generator(model, preset: str, threads: int):
    """``model``'s one-step generator exported to ONNX (fp32) in a temporary folder, loaded in onnxruntime."""
    import tempfile

    from pmf.checkpoints.load import LoadedCheckpoint
    from pmf.export.onnx_export import export_onnx
    from pmf.export.onnx_runtime import OnnxGenerator
    from pmf.sampling import SamplingSetting

    with tempfile.TemporaryDirectory(prefix="pmf-bench-") as folder:  # the session holds the graph: no file left
        path = export_onnx(LoadedCheckpoint(model, preset, None, SamplingSetting(**GUIDANCE)), Path(folder) / "g.onnx")
        print(f"exported {path} ({path.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)
        return OnnxGenerator(path, threads=threads)


def compare_backends(args, bench, batches: list[int], dev) -> list[dict]:
    """One row per batch size: each backend's seconds and images/s, speed-up over the first backend (eager
    where timed) and max abs difference from it."""
    names = args.backends.split(",")
    clock = {"cpu": time.process_time, "wall": time.perf_counter, None: None}[args.clock]
    rows = []
    for batch in batches:
        noise, labels = bench.inputs(batch)
        fns = {n: bench.backend(n) for n in names}
        ref = fns[names[0]](noise, labels).cpu()
        row = {"batch": batch}
        for n, fn in fns.items():
            row[f"{n}_max_abs_diff"] = (fn(noise, labels).cpu() - ref).abs().max().item()
        times = common.time_interleaved({n: (lambda f=fn, z=noise, y=labels: f(z, y)) for n, fn in fns.items()}, dev,
                                        warmup=args.warmup, repeats=args.repeats, clock=clock)
        for n in names:
            row[f"{n}_s"] = round(times[n], 5)
            row[f"{n}_images_per_s"] = round(batch / times[n], 2)
            row[f"{n}_speedup_vs_{names[0]}"] = round(times[names[0]] / times[n], 3)
        if "onnx" in names and "compiled" in names:
            row["onnx_speedup_vs_compiled"] = round(times["compiled"] / times["onnx"], 3)
        rows.append(row)
        print(row, file=sys.stderr)
    return rows


def child_peak(args) -> int:
    dev = common.setup(args.device, args.threads)
    bench = Bench(args, dev)
    fn = bench.ours if args.memory_child == "ours" else bench.released
    noise, labels = bench.inputs(args.batch)
    fn(noise, labels)  # warm-up at the measured batch size: a compiled path compiles its graph for it here
    return common.measure_peak(lambda: fn(noise, labels), dev)


def run(args, argv) -> dict:
    dev = common.setup(args.device, args.threads)
    bench = Bench(args, dev)
    batches = sorted({args.batch, *(int(b) for b in args.sweep.split(","))} if args.sweep else {args.batch})
    if args.backends:
        result = {"benchmark": "inference_backends", "preset": args.preset, "device": common.device_name(dev),
                  "cpu": common.cpu_model(), "threads": args.threads, "clock": args.clock or common.timer_name(dev),
                  "torch": torch.__version__, "onnxruntime": _version("onnxruntime"), "guidance": GUIDANCE,
                  "backends": args.backends.split(","), "sweep": compare_backends(args, bench, batches, dev)}
        common.write_json(args.json, result)
        return result
    rows = []
    for batch in batches:
        noise, labels = bench.inputs(batch)
        diff = (bench.ours(noise, labels) - bench.released(noise, labels)).abs().max().item()
        times = common.time_interleaved({"ours": lambda n=noise, y=labels: bench.ours(n, y),
                                         "release": lambda n=noise, y=labels: bench.released(n, y)},
                                        dev, warmup=args.warmup, repeats=args.repeats)
        rows.append({"batch": batch, "ours_s": round(times["ours"], 5), "release_s": round(times["release"], 5),
                     "ours_images_per_s": round(batch / times["ours"], 2),
                     "release_images_per_s": round(batch / times["release"], 2),
                     "speedup": round(times["release"] / times["ours"], 3), "max_abs_diff": diff})
        print(rows[-1], file=sys.stderr)
    main_row = next(r for r in rows if r["batch"] == args.batch)

    peaks = {"ours": None, "release": None}
    if not args.no_memory:
        calls = {"ours": bench.ours, "release": bench.released}
        peaks = common.memory_peaks(peaks, lambda k: functools.partial(calls[k], *bench.inputs(args.batch)), dev,
                                    __file__, argv)

    result = {
        "benchmark": "inference", "preset": args.preset, "batch": args.batch, "device": common.device_name(dev),
        "precision": args.precision, "compile": args.compile, "cuda_graphs": args.cuda_graphs,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None, "timer": common.timer_name(dev),
        "torch": torch.__version__,
        "guidance": GUIDANCE,
        "speedup": main_row["speedup"], "max_abs_diff": main_row["max_abs_diff"],
        "ours_images_per_s": main_row["ours_images_per_s"], "release_images_per_s": main_row["release_images_per_s"],
        "ours_peak_mib": common.mib(peaks["ours"]), "release_peak_mib": common.mib(peaks["release"]),
        "memory_ratio": None if peaks["release"] is None else round(peaks["ours"] / max(peaks["release"], 1), 3),
        "sweep": rows,
    }
    common.write_json(args.json, result)
    return result


def main(argv=None) -> dict:
    return common.benchmark_main(argv, parse_args, child_peak, run)


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
