"""The cost of one FD-loss post-training step (``pmf train --objective fd``), split into its parts: the
generator's forward (one u-head pass) and backward, the representation's forward and backward, and the
statistics with the eigen-solve (moments blended with the EMA, Sigma_ref^1/2 Sigma Sigma_ref^1/2, eigvalsh,
forward and backward), plus the optimiser step. CPU time of this process with one thread (common.py: on a
shared machine wall time mostly measures the other jobs), median of the repeats, parts interleaved.

The generator is pMF-MNIST/7 with random weights (its cost does not depend on them); the representation is
``offline`` (1,088 features); the reference is a random SPD matrix of that size. Memory: the FD statistics'
buffers are counted from their shapes (float64 mu, m2, Sigma_ref, Sigma_ref^1/2).

    python benchmarks/fd_step_cost.py --json benchmarks/results/cpu/fd_step_cost.json"""

from __future__ import annotations

import argparse

import torch

import common
from pmf.evaluation.representations import get_representation
from pmf.model_configs import model_config
from pmf.nn.model import PMFDiT
from pmf.posttrain.fd_loss import ema_moments, frechet_distance, normalised, ref_factor
from pmf.sampling import sample_with_grad


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repr", default="offline")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dev = common.setup("cpu", args.threads)
    torch.manual_seed(0)
    mcfg = model_config("pMF-MNIST/7")
    model = PMFDiT(mcfg)
    rep = get_representation(args.repr)
    D, B = rep.feature_dim, args.batch
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64) / D ** 0.5
    sigma_ref, mu_ref = a @ a.T + 1e-3 * torch.eye(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64)
    root = ref_factor(sigma_ref)  # full rank here: D columns
    mu_ema, m2_ema = torch.zeros(D, dtype=torch.float64), sigma_ref.clone()
    noise = torch.randn(B, mcfg.in_channels, mcfg.input_size, mcfg.input_size, generator=g)
    labels = torch.arange(B) % mcfg.num_classes
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    box = {}

    def gen_forward():
        box["x"] = sample_with_grad(model, noise, labels, omega=3.0, t_min=0.1, t_max=0.8)

    def repr_forward():
        box["xl"] = box["x"].detach().requires_grad_()
        box["f"] = rep(box["xl"])

    def stats_eigen():  # forward and backward of the FD given the features
        fl = box["f"].detach().requires_grad_()
        fd = frechet_distance(*ema_moments(mu_ema, m2_ema, fl, 0.99), mu_ref, sigma_ref, root)
        normalised(fd).backward()
        box["gf"] = fl.grad

    def repr_backward():
        box["f"].backward(box["gf"])

    def gen_backward():
        model.zero_grad(set_to_none=True)
        box["x"].backward(box["xl"].grad)

    def optimiser():
        opt.step()

    parts = {"generator_forward": gen_forward, "representation_forward": repr_forward,
             "statistics_and_eigen_solve": stats_eigen, "representation_backward": repr_backward,
             "generator_backward": gen_backward, "optimiser_step": optimiser}
    times = common.time_interleaved(parts, dev, warmup=1, repeats=args.repeats)
    total = sum(times.values())
    result = {"cpu": common.cpu_model(), "threads": args.threads, "clock": "process CPU time",
              "generator": "pMF-MNIST/7", "representation": args.repr, "feature_dim": D, "batch": B,
              "seconds": {k: round(v, 4) for k, v in times.items()}, "total_seconds": round(total, 4),
              "share": {k: round(v / total, 3) for k, v in times.items()},
              "fd_state_mib": common.mib(8 * (D + 3 * D * D))}
    common.write_json(args.json, result)


if __name__ == "__main__":
    main()
