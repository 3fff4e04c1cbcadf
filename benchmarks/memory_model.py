"""The per-GPU memory model of docs/training.md ("Memory per GPU"): state bytes (parameters, gradients,
optimiser state, EMAs) under DDP, FSDP2 and HSDP, activation bytes per image with and without activation
checkpointing, the largest per-GPU batch that fits on GPUs of 24, 40 and 80 GB, and the micro-batch and
``--grad-accum`` that run the recipes' batch of 1024 on one such GPU.

How the numbers are obtained:
- State bytes are measured (``pmf.training.monitor.state_bytes``: the bytes of the live tensors after one optimiser
  step)
  in one CPU process for the presets given with ``--measure-state`` (the B models by default), and computed
  from parameter counts for all presets: fp32 parameters and gradients (4 bytes each), Muon momentum (4 bytes
  per Muon parameter) and two Adam moments (8 bytes per Adam parameter) plus an 8-byte step count per tensor,
  and one fp32 copy per EMA. Under FSDP2 every part is divided by the shard count; HSDP with 8 ranks per
  shard group (one 8-GPU node) shards the same way, its replicas hold the same per-GPU bytes.
- Activation bytes per image are measured for one pMF training step (``pmf_loss`` + backward, fp32, inline
  du/dt, guidance on every sample) on the CPU: peak resident size above the weights, in a fresh process (see
  ``common.py``), at batch 1 and 2 (their difference is the cost of one image) of the preset cut to 4 and to 6
  blocks (their difference is the cost of one block; the rest is the embedding, the heads' ends and the
  image-space tensors of the loss). A preset's figure is the rest plus its block count times the per-block
  cost, times its width over the measured preset's width (the token count is 276 for every preset).

    python benchmarks/memory_model.py --json benchmarks/results/cpu/memory_model.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import common
from pmf.model_configs import model_config
from pmf.nn.model import PMFDiT
from pmf.training.config import EMAConfig, OptimConfig
from pmf.training.optim import build_optimizer, split_parameters

PRESETS = ["pMF-B/16", "pMF-L/16", "pMF-H/16", "pMF-B/32", "pMF-L/32", "pMF-H/32"]
N_EMAS = 3  # the released recipes keep half-lives 500, 1000 and 2000 kimg
GPUS = 8
GPU_GB = (24, 40, 80)  # a consumer card, an A100-40GB, an A100/H100-80GB
RECIPE_BATCH = 1024  # the released recipes' batch, run on one GPU with gradient accumulation
GIB = 1024**3


def counts(preset: str) -> dict:
    """Parameter counts (training model, with the v-head) and the block structure."""
    cfg = model_config(preset)
    with torch.device("meta"):
        model = PMFDiT(cfg)
    muon, adam = split_parameters(model)
    blocks = cfg.shared_depth + 2 * cfg.aux_head_depth
    return {"params": sum(p.numel() for p in model.parameters()), "muon": sum(p.numel() for p in muon),
            "adam": sum(p.numel() for p in adam), "tensors": len(list(model.parameters())), "blocks": blocks,
            "hidden": cfg.hidden_size}


def state_model(c: dict, shards: int = 1) -> dict:
    """Per-GPU bytes of each kind of state, from parameter counts, sharded over ``shards`` ranks."""
    return {"parameters": 4 * c["params"] / shards, "gradients": 4 * c["params"] / shards,
            "optimizer": (4 * c["muon"] + 8 * c["adam"]) / shards + 8 * c["tensors"],
            "emas": N_EMAS * 4 * c["params"] / shards}


def measure_state(preset: str) -> dict:
    """The state bytes of one process (DDP layout), measured on the live tensors: the model, its gradients,
    the optimiser state as the optimiser itself creates it on its first step (no Newton-Schulz is run: on a
    CPU that alone takes minutes for a B model), and three EMAs."""
    from pmf.training.ema import EMASet
    from pmf.training.monitor import state_bytes

    model = PMFDiT(model_config(preset))
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for group in opt.param_groups:
        opt._next_steps(group["params"], *(("momentum",) if group["kind"] == "muon" else ("exp_avg", "exp_avg_sq")))
    emas = EMASet(model, EMAConfig(halflives_kimg=[500, 1000, 2000]), 1024)
    return state_bytes(model, opt, emas)


def activation_child(preset: str, batch: int, ckpt: bool, shared: int, aux: int) -> dict:
    """Peak bytes of one training step above the weights (run in a fresh process), for ``preset`` cut to
    ``shared`` trunk blocks and ``aux`` blocks per head."""
    from pmf.objective import pmf_loss, sample_draws

    torch.set_num_threads(1)
    cfg = model_config(preset, depth=shared + aux, aux_head_depth=aux)
    model = PMFDiT(cfg, activation_checkpointing=ckpt)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, cfg.input_size, cfg.input_size, generator=gen) * 2 - 1
    y = torch.randint(0, cfg.num_classes, (batch,), generator=gen)
    draws = sample_draws(x, P_mean=0.8, P_std=0.8, data_proportion=0.5, cfg_max=7.0, cfg_beta=1.0,
                         class_dropout_prob=0.1, noise_scale=1.0, generator=gen)
    draws.omega[:] = 3.0  # guidance active on every sample: the largest guidance pass

    def step():
        pmf_loss(model, x, y, draws, num_classes=cfg.num_classes).loss.backward()

    peak = common.measure_peak(step, torch.device("cpu"))
    return {"preset": preset, "batch": batch, "ckpt": ckpt, "blocks": shared + 2 * aux, "peak_bytes": peak}


CUT = ((2, 1), (4, 1))  # (trunk blocks, blocks per head): 4 and 6 blocks


def measure_activations(preset: str, ckpt: bool) -> dict:
    """Per image: bytes of one block and the rest (embedding, losses, image-space tensors), from steps at
    batch 1 and 2 of the preset cut to 4 and 6 blocks."""
    per_image = {}
    for shared, aux in CUT:
        runs = [common.run_child(Path(__file__), ["--child", preset, str(b), str(int(ckpt)), str(shared), str(aux)])
                for b in (1, 2)]
        per_image[shared + 2 * aux] = runs[1]["peak_bytes"] - runs[0]["peak_bytes"]
    (b0, v0), (b1, v1) = sorted(per_image.items())
    block = (v1 - v0) / (b1 - b0)
    return {"per_block": block, "rest": v0 - b0 * block, "measured": per_image}


def largest_batch(free_bytes: float, per_image: float) -> int:
    return max(int(free_bytes // per_image), 0)


def micro_batches(batch: int, fits: int) -> dict:
    """The largest micro-batch that divides ``batch`` and fits (``fits`` images), and the ``--grad-accum`` that
    gives ``batch`` with it; both None when not even one image fits."""
    micro = max((d for d in range(1, min(batch, fits) + 1) if batch % d == 0), default=None)
    return {"micro_batch": micro, "grad_accum": None if micro is None else batch // micro}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--measure-state", default="pMF-B/16,pMF-B/32")
    p.add_argument("--measure-activations", default="pMF-B/16,pMF-B/32")
    p.add_argument("--usable", type=float, default=0.9, help="fraction of a GPU's memory the model may use")
    p.add_argument("--json", default=None)
    p.add_argument("--reuse", default=None, help="take the activation measurements of an earlier result file")
    p.add_argument("--table", default=None, help="print the markdown tables of a result file and stop")
    p.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def activations_of(presets: str, reuse: str | None) -> dict:
    """{preset: {ckpt: measure_activations(...)}} of the comma-separated ``presets``, taken from the result file
    ``reuse`` where it has them."""
    measured_act = {}
    reused = json.loads(Path(reuse).read_text())["activation_measurements"] if reuse else {}
    for n in [n for n in presets.split(",") if n]:
        if n in reused:
            measured_act[n] = {k == "ckpt": v for k, v in reused[n].items()}
            continue
        measured_act[n] = {ckpt: measure_activations(n, ckpt) for ckpt in (False, True)}
        print(n, measured_act[n], file=sys.stderr, flush=True)
    return measured_act


def activation_rows(c: dict, src: str, measured_act: dict) -> dict:
    """A preset's activations per image (of parameter counts ``c``) scaled from the measured preset ``src``, and
    where they come from."""
    s = counts(src)
    width = c["hidden"] / s["hidden"]  # a block's activations scale with the width at a fixed token count
    plain, ckpt = measured_act[src][False], measured_act[src][True]
    # Checkpointed, a block keeps its inputs x and dx (2 x 276 tokens x width, fp32); at 4 and 6 blocks
    # those are smaller than the step's transients (guidance pass, one block's recomputation), so the
    # peak does not grow with the depth there: the transients are measured (6 blocks less their inputs)
    # and the inputs of every block are counted.
    saved = lambda cc: 2 * 276 * cc["hidden"] * 4  # noqa: E731
    transient = ckpt["measured"][max(ckpt["measured"], key=int)] - max(map(int, ckpt["measured"])) * saved(s)
    return {"activations_per_image": {"plain": plain["rest"] + c["blocks"] * plain["per_block"] * width,
                                      "ckpt": transient * width + c["blocks"] * saved(c)},
            "activations_source": (f"{src} cut to 4 and 6 blocks, measured at batch 1 and 2; without "
                                   f"checkpointing per block x {c['blocks']} blocks x width ratio {width:.3f}; "
                                   "with checkpointing the measured transients plus the blocks' saved inputs")}


def batch_rows(row: dict, usable: float) -> dict:
    """The largest batch per GPU size, mode and kind, and the micro-batches of the recipes' batch on one GPU."""
    fits = {}
    for gb in GPU_GB:
        for mode in ("ddp", "fsdp", "hsdp"):
            free = usable * gb * 1e9 - sum(row["state"][mode].values())
            for kind, per in row["activations_per_image"].items():
                fits[f"{gb}GB/{mode}/{kind}"] = largest_batch(free, per)
    return {"largest_batch": fits,
            "one_gpu_recipe_batch": {f"{gb}GB/{kind}": micro_batches(RECIPE_BATCH, fits[f"{gb}GB/ddp/{kind}"])
                                     for gb in GPU_GB for kind in ("plain", "ckpt")}}


def preset_row(preset: str, measured_state: dict, measured_act: dict, usable: float) -> dict | None:
    """A preset's result row; None when no preset of its patch size has activation measurements."""
    c = counts(preset)
    row = {"counts": c, "state": {"ddp": state_model(c), "fsdp": state_model(c, GPUS),
                                  "hsdp": state_model(c, GPUS)}}
    if preset in measured_state:
        row["state_measured_ddp"] = measured_state[preset]
    patch = preset.split("/")[1]
    src = preset if preset in measured_act else next((m for m in measured_act if m.split("/")[1] == patch), None)
    if src is None:
        return None
    row.update(activation_rows(c, src, measured_act))
    row.update(batch_rows(row, usable))
    return row


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    if args.child:
        preset, batch, ckpt, shared, aux = args.child
        print(json.dumps(activation_child(preset, int(batch), bool(int(ckpt)), int(shared), int(aux))))
        return

    result = {"gpus": GPUS, "emas": N_EMAS, "usable_fraction": args.usable, "presets": {}}
    measured_state = {n: measure_state(n) for n in args.measure_state.split(",") if n}
    measured_act = activations_of(args.measure_activations, args.reuse)
    result["activation_measurements"] = {n: {("ckpt" if k else "plain"): v for k, v in m.items()}
                                         for n, m in measured_act.items()}
    for preset in PRESETS:
        row = preset_row(preset, measured_state, measured_act, args.usable)
        if row is not None:
            result["presets"][preset] = row
    common.write_json(args.json, result)


def markdown(result: dict) -> str:
    """The tables of docs/training.md ("Memory per GPU") from a result file (``memory_model.py --table FILE``)."""
    gb = 1e9
    lines = ["| model | params | mode (8 GPUs) | parameters | gradients | optimiser | EMAs (3) | state total |",
             "|---|---|---|---|---|---|---|---|"]
    for preset, row in result["presets"].items():
        for mode in ("ddp", "fsdp", "hsdp"):
            st = row["state"][mode]
            lines.append(f"| {preset} | {row['counts']['params'] / 1e6:.0f} M | {mode} | "
                         + " | ".join(f"{st[k] / gb:.2f} GB" for k in ("parameters", "gradients", "optimizer", "emas"))
                         + f" | {sum(st.values()) / gb:.2f} GB |")
    lines += ["", "| model | activations per image (fp32) | with checkpointing | largest batch per GPU: 40 GB ddp / "
              "fsdp, hsdp | 80 GB ddp / fsdp, hsdp | with checkpointing, 40 GB | with checkpointing, 80 GB |",
              "|---|---|---|---|---|---|---|"]
    for preset, row in result["presets"].items():
        if "activations_per_image" not in row:
            continue
        a, f = row["activations_per_image"], row["largest_batch"]
        pair = [f"{f[f'{g}GB/ddp/{k}']} / {f[f'{g}GB/fsdp/{k}']}" for k in ("plain", "ckpt") for g in (40, 80)]
        lines.append(f"| {preset} | {a['plain'] / gb:.2f} GB | {a['ckpt'] / gb:.2f} GB | " + " | ".join(pair) + " |")
    sizes = " | ".join(f"{g} GB" for g in GPU_GB)
    lines += ["", f"| model | one GPU at batch {RECIPE_BATCH}: micro-batch x --grad-accum, {sizes} | with "
              f"checkpointing, {sizes} |", "|---|" + "---|" * (2 * len(GPU_GB))]
    for preset, row in result["presets"].items():
        if "one_gpu_recipe_batch" not in row:
            continue
        cells = [row["one_gpu_recipe_batch"][f"{g}GB/{k}"] for k in ("plain", "ckpt") for g in GPU_GB]
        lines.append(f"| {preset} | " + " | ".join("does not fit" if c["micro_batch"] is None else
                                                    f"{c['micro_batch']} x {c['grad_accum']}" for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
