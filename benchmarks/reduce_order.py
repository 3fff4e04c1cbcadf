"""Cost of the ordered gradient reduction (``--reduce ordered``) against the backend's own collectives.

Starts ``--world`` processes (gloo on CPU, or NCCL with ``--device cuda``, one GPU per process) and times,
interleaved, on a float32 buffer of ``--numel`` elements (default: the gradients of one pMF-B/16 block, the
unit FSDP2 reduces at a time):

- all-reduce (DDP's bucket): ``dist.all_reduce`` then a division, against ``ordered_all_reduce_``
  (all_to_all, rank-order tree sum, all-gather);
- reduce-scatter (FSDP2's unit): ``dist.reduce_scatter_tensor`` against ``ordered_reduce_scatter_``
  (all_to_all, rank-order tree sum).

Each timing is the median wall time over ``--repeats`` calls, each call between two barriers; the ratios
ordered / native are the figures to read.

    python benchmarks/reduce_order.py --world 2
    python benchmarks/reduce_order.py --world 4 --json benchmarks/results/cpu/reduce_order_w4.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import common
from pmf.parallel.process import free_port

BLOCK_B16 = 7_081_088  # parameters of one pMF-B/16 transformer block (width 768, SwiGLU)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", type=int, default=2, help="processes")
    p.add_argument("--numel", type=int, default=BLOCK_B16, help="float32 elements reduced per call")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process on the CPU")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--json", default=None, help="also write the result to this file")
    return p.parse_args(argv)


def _worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    from pmf import parallel as P

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.world)
    n = args.numel - args.numel % args.world
    grads = torch.randn(n, generator=torch.Generator().manual_seed(rank)).to(dev)
    shard = torch.empty(n // args.world, device=dev)

    def native_all_reduce():
        buf = grads.clone()
        dist.all_reduce(buf)
        buf.div_(args.world)

    def ordered_all_reduce():
        P.ordered_all_reduce_(grads.clone())

    rs = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # the name before 2.14

    def native_reduce_scatter():
        rs(shard, grads)

    def ordered_reduce_scatter():
        P.ordered_reduce_scatter_(shard, grads, dist.group.WORLD)

    fns = {"all_reduce_native": native_all_reduce, "all_reduce_ordered": ordered_all_reduce,
           "reduce_scatter_native": native_reduce_scatter, "reduce_scatter_ordered": ordered_reduce_scatter}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(args.warmup + args.repeats):
        for name, fn in fns.items():
            dist.barrier()
            common.sync(dev)
            t0 = time.perf_counter()
            fn()
            common.sync(dev)
            dist.barrier()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    if rank == 0:
        torch.save({k: statistics.median(v) for k, v in times.items()}, out)
    dist.destroy_process_group()


def main(argv=None) -> dict:
    args = parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.pt")
        mp.spawn(_worker, args=(args, port, out), nprocs=args.world, join=True)
        med = torch.load(out)
    dev = torch.device(args.device)
    result = {
        "benchmark": "reduce_order", "device": common.device_name(dev) if dev.type == "cuda" else
        f"CPU, {args.world} gloo processes x {args.threads} thread(s)", "world": args.world,
        "numel": args.numel, "repeats": args.repeats, "timer": "wall, between barriers, median",
        "seconds": med,
        "ratio_all_reduce_ordered_over_native": med["all_reduce_ordered"] / med["all_reduce_native"],
        "ratio_reduce_scatter_ordered_over_native": med["reduce_scatter_ordered"] / med["reduce_scatter_native"],
    }
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
