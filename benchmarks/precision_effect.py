"""What bf16 autocast changes against the release's fp32: the training loss, its intermediates and its
gradients on the release's loss fixtures (pMF-Tiny/4 with the fixture weights and draws), and one training
step (loss, backward, optimiser step) of pMF-S/4 on random data.

    python benchmarks/precision_effect.py [--device cuda] [--json out.json]

Figures, each bf16 against fp32 on the same inputs:
- ``fixtures``: per setting A/B/C, the relative difference of the logged loss_u / loss_v, of the raw
  per-sample losses and of du_dt and v_g (max abs difference over max abs), the largest relative difference
  of a parameter's gradient norm, and the cosine between the whole gradients.
- ``step``: pMF-S/4 (initialised, then gates N(0, 0.2^2) and output layers N(0, 0.02^2) so that every tensor
  gets a gradient), batch 8: the same gradient figures, the parameter change after one optimiser step
  (norm of the difference over the norm of the fp32 update), and the step time of each (``time_ratio`` =
  bf16 / fp32; process CPU time on a CPU, wall time on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pmf  # noqa: E402
from common import device_name, setup, time_interleaved, write_json  # noqa: E402
from pmf.objective import Draws, pmf_loss, sample_draws  # noqa: E402
from pmf.training.config import OptimConfig  # noqa: E402
from pmf.training.optim import build_optimizer  # noqa: E402

FIXTURES = Path(os.environ.get("PMF_FIXTURES", Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official"))


def autocast(precision: str, dev: torch.device):
    if precision == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def loss_and_grads(model, x, y, draws, precision, dev):
    model.zero_grad(set_to_none=True)
    with autocast(precision, dev):
        out = pmf_loss(model, x, y, draws, num_classes=model.config.num_classes)
    out.loss.backward()
    grads = {n: p.grad.detach().double().clone() for n, p in model.named_parameters()}
    return out, grads


def grad_figures(g32: dict, g16: dict) -> dict:
    """Largest relative difference of a tensor's gradient norm (tensors with a non-zero fp32 gradient) and the
    cosine between the whole gradients."""
    flat32 = torch.cat([g.flatten() for g in g32.values()])
    flat16 = torch.cat([g16[n].flatten() for n in g32])
    norm_rel = max(abs(g16[n].norm().item() / g.norm().item() - 1) for n, g in g32.items() if g.norm() > 0)
    cos = torch.nn.functional.cosine_similarity(flat32, flat16, dim=0).item()
    return {"grad_norm_max_rel_diff": norm_rel, "grad_cosine": cos}


def fixtures(dev: torch.device) -> dict:
    sd = torch.load(FIXTURES / "net_tiny.pt", weights_only=True)
    model = pmf.load_release_state_dict(pmf.build_model("pMF-Tiny/4"), sd).to(dev)
    out = {}
    for s in "ABC":
        d = {k: torch.from_numpy(np.asarray(v)).to(dev) for k, v in np.load(FIXTURES / f"loss_{s}.npz").items()}
        B = d["t"].shape[0]
        draws = Draws(t=d["t"], r=d["r"], noise=d["noise_scale"] * d["e_unit"], omega=d["omega"],
                      t_min=d["t_min"], t_max=d["t_max"], drop=torch.arange(B, device=dev) < d["num_drop"])
        r32, g32 = loss_and_grads(model, d["x"], d["labels"], draws, "fp32", dev)
        r16, g16 = loss_and_grads(model, d["x"], d["labels"], draws, "bf16", dev)
        out[s] = {
            "loss_u_rel_diff": abs(r16.loss_u.item() / r32.loss_u.item() - 1),
            "loss_v_rel_diff": abs(r16.loss_v.item() / r32.loss_v.item() - 1),
            "per_sample_u_raw_rel_diff": rel(r16.per_sample_u_raw, r32.per_sample_u_raw),
            "du_dt_rel_diff": rel(r16.du_dt, r32.du_dt),
            "v_g_rel_diff": rel(r16.v_g, r32.v_g),
            "fp32_vs_release_loss_u_rel_diff": abs(r32.loss_u.item() / d["loss_u_logged"].item() - 1),
            **grad_figures(g32, g16),
        }
    return out


def training_step(dev: torch.device, arch: str, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = pmf.build_model(arch).to(dev)
    with torch.no_grad():  # a trained network's gates and output layers are not zero: give them values
        for n, p in model.named_parameters():
            if n.endswith(("attn_scale", "mlp_scale")):
                p.normal_(0, 0.2)
            elif "final_layer.linear" in n:
                p.normal_(0, 0.02)
    c = model.config
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator(dev).manual_seed(0)
    x = torch.rand(batch, c.in_channels, c.input_size, c.input_size, generator=gen, device=dev) * 2 - 1
    y = torch.randint(0, c.num_classes, (batch,), generator=gen, device=dev)
    draws = sample_draws(x, P_mean=0.8, P_std=0.8, data_proportion=0.5, cfg_max=7.0, cfg_beta=1.0,
                         class_dropout_prob=0.1, noise_scale=c.noise_scale, generator=gen)
    after = {}
    for precision in ("fp32", "bf16"):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3))
        out, grads = loss_and_grads(model, x, y, draws, precision, dev)
        opt.step()
        after[precision] = ({n: p.detach().double().clone() for n, p in model.named_parameters()}, grads, out)
    times = time_interleaved({prec: (lambda prec=prec: loss_and_grads(model, x, y, draws, prec, dev))
                              for prec in ("fp32", "bf16")}, dev, warmup=1, repeats=repeats)
    result = {"fp32_step_s": times["fp32"], "bf16_step_s": times["bf16"]}
    (w32, g32, o32), (w16, g16, o16) = after["fp32"], after["bf16"]
    upd = torch.cat([(w32[n] - start[n].double()).flatten() for n in w32]).norm()
    diff = torch.cat([(w16[n] - w32[n]).flatten() for n in w32]).norm()
    result.update(grad_figures(g32, g16), loss_u_rel_diff=abs(o16.loss_u.item() / o32.loss_u.item() - 1),
                  update_rel_diff=(diff / upd).item(), time_ratio=result["bf16_step_s"] / result["fp32_step_s"])
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--arch", default="pMF-S/4", help="preset of the training-step comparison")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    dev = setup(args.device, args.threads)
    res = {"device": device_name(dev), "torch": torch.__version__, "fixtures": fixtures(dev),
           "step": {"arch": args.arch, "batch": args.batch_size,
                    **training_step(dev, args.arch, args.batch_size, args.repeats)}}
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
