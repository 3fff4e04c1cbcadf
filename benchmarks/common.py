"""Shared helpers of the benchmark scripts: device set-up, timing, peak memory, JSON output.

Peak memory is the memory a measured call needs above what was live before it (weights, batch):
on CUDA ``max_memory_allocated`` minus ``memory_allocated`` before the call; on a CPU, where torch's
allocations are invisible to Python's tracers, the call runs in a fresh process and we read the peak
resident set size (``VmHWM``) minus the resident size just before the call."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Dense peak throughput in FLOP/s by (device-name fragment, dtype); bf16 for autocast runs, TF32 for fp32.
PEAK_FLOPS = {
    ("H100", "bf16"): 989e12, ("H100", "fp32"): 494e12,
    ("H200", "bf16"): 989e12, ("H200", "fp32"): 494e12,
    ("A100", "bf16"): 312e12, ("A100", "fp32"): 156e12,
}


def setup(device: str, threads: int | None) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(threads or torch.get_num_threads())
    elif dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def peak_flops(dev: torch.device, precision: str) -> float | None:
    name = device_name(dev)
    for (frag, prec), value in PEAK_FLOPS.items():
        if frag in name and prec == precision:
            return value
    return None


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), for the figures measured on it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timer_name(dev: torch.device) -> str:
    return "wall" if dev.type == "cuda" else "process_cpu"


def time_interleaved(fns: dict[str, Callable[[], object]], dev: torch.device, *, warmup: int,
                     repeats: int, clock: Callable[[], float] | None = None) -> dict[str, float]:
    """Median seconds per call of each function; calls alternate so that load drift hits all alike.
    On a CPU the clock is this process's CPU time: on a shared machine, wall time mostly measures the
    other jobs (with one torch thread, CPU time is the work done). ``clock`` overrides the choice."""
    clock = clock or (time.perf_counter if dev.type == "cuda" else time.process_time)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(dev)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(dev)
            start = clock()
            fn()
            sync(dev)
            times[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak resident set size of this process image in bytes: ``VmHWM``. (``ru_maxrss`` is no use here:
    Linux carries the parent's peak over fork and exec into a child's value.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Lower the peak RSS to the current RSS (Linux >= 4.0); harmless where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def measure_peak(fn: Callable[[], object], dev: torch.device) -> int:
    """Bytes needed by ``fn()`` above what is live before it. On a CPU call this in a fresh process after a
    warm-up at a small size: the peak RSS is reset where the kernel allows, else it never goes down."""
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        sync(dev)
        return torch.cuda.max_memory_allocated(dev) - base
    reset_peak_rss()
    base = current_rss()
    fn()
    return max(peak_rss() - base, 0)


def run_child(script: Path, argv: list[str]) -> dict:
    """Run ``script argv`` in a fresh interpreter and parse the JSON line it prints last."""
    # Fixed malloc thresholds: large blocks are mmapped and unmapped on free, so the resident size follows
    # the live allocations instead of glibc's (adaptive) caching of freed heap memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, str(script), *argv], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def benchmark_main(argv: list[str] | None, parse_args: Callable, child_peak: Callable, run: Callable):
    """The ``main()`` of a benchmark that measures CPU memory in fresh processes (``memory_peaks``): parse
    ``argv``; with ``--memory-child KEY`` print ``child_peak(args)`` (bytes) as the JSON line ``memory_peaks``
    reads and return {}; else return ``run(args, argv)``."""
    args = parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps({"peak": child_peak(args)}))
        return {}
    return run(args, argv)


def memory_peaks(keys, call_of: Callable, dev: torch.device, script: str | Path,
                 argv: list[str] | None) -> dict:
    """Bytes each key's call needs above what is live before it (``measure_peak``): on CUDA in this process
    (``call_of(key)`` gives the call, made just before it is measured), on a CPU each in a fresh process running
    ``script`` with this run's ``argv`` and ``--memory-child KEY`` (``benchmark_main``)."""
    if dev.type == "cuda":
        return {k: measure_peak(call_of(k), dev) for k in keys}
    child = list(sys.argv[1:] if argv is None else argv)
    return {k: run_child(Path(script), [*child, "--memory-child", str(k)])["peak"] for k in keys}


def write_json(path: str | None, result: dict) -> dict:
    """Print ``result`` as JSON, also into the file ``path`` if given; returns ``result``."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return result


def mib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**20, 2)
