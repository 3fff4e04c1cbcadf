"""Optimisers for pMF training (spec section 6): Muon for 2-D weight matrices with Adam for everything else
(the release's split), AdamW for the ablation, and learning-rate schedules.

The release builds its optimiser as ``optax.contrib.muon(learning_rate, adam_b2=0.95)`` with every other
option at its default. That optimiser sends every 2-D array to Muon and every other array to Adam. In
PyTorch terms that is: all ``nn.Linear`` weights (attention, SwiGLU, embedder MLPs, final layers) and the
class-embedding table go to Muon; convolution kernels (4-D), prefix tokens and the position embedding (3-D),
norm scales, gates and biases (1-D) go to Adam. ``split_parameters`` reproduces this rule (``p.ndim == 2``).

How our ``Muon`` differs from the release's (optax) Muon:
- Weight layout. Flax stores a dense kernel as [in, out], PyTorch as [out, in]; both orthogonalise the same
  matrix up to a transpose, and we scale the update by sqrt(max(1, out / in)) as optax does with its layout.
- Bias correction of the momentum. Optax bias-corrects the momentum before the Nesterov mix; we use the
  plain exponential average m <- beta m + (1 - beta) g and the Nesterov update beta m + (1 - beta) g.
  Newton-Schulz normalises its input by the Frobenius norm, so a global scale has no effect; only the
  relative weight of m and g in the very first steps differs (by the factor 1 - beta^t).
- Precision. The Newton-Schulz iteration (5 steps, coefficients (3.4445, -4.7750, 2.0315), eps 1e-8)
  runs in float32 here (bfloat16 is an option) regardless of the parameter dtype.
- Distribution. Under DDP each process orthogonalises every matrix itself after the all-reduce (identical
  results on all ranks); nothing is sharded.
- Adam side. Same betas (0.9, 0.95), eps 1e-8, no weight decay, standard bias correction; ``adam_lr`` may
  differ from the Muon learning rate (the release uses one learning rate for both).

Two implementations of one step, chosen by ``Muon(..., foreach=...)``, give the same result to float rounding
and share the state layout (a checkpoint of one resumes in the other). The per-parameter path loops in Python.
The batched path (default) stacks the Nesterov updates of all Muon matrices of one (shape, dtype, device) into
[n, m, k] and runs Newton-Schulz once on the stack with batched matmuls; momentum, weight decay and the Adam
side use ``torch._foreach_*`` multi-tensor ops. A pMF network has many matrices of the same shape (each
block's q/k/v/out projections, the SwiGLU w1/w3 and w2), so the batched path runs few, large kernels.
"""

from __future__ import annotations

import math

import torch

from .errors import PMFError
from .train_config import OptimConfig

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-8, dtype=torch.float32) -> torch.Tensor:
    """Approximate U V^T of G = U S V^T [m, n] by the quintic Newton-Schulz iteration (Muon)."""
    X = G.to(dtype)
    transposed = X.shape[0] > X.shape[1]
    if transposed:
        X = X.T  # iterate on the wide side: X X^T is the smaller Gram matrix
    X = X / (X.norm() + eps)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return (X.T if transposed else X).to(G.dtype)


def newton_schulz_batched(G: torch.Tensor, steps: int = 5, eps: float = 1e-8, dtype=torch.float32) -> torch.Tensor:
    """``newton_schulz`` of every matrix of a stack G [n, m, k] at once: per-matrix Frobenius normalisation,
    batched matmuls; returns [n, m, k]."""
    X = G.to(dtype)
    transposed = X.shape[-2] > X.shape[-1]
    if transposed:
        X = X.mT  # [n, k, m]: the Gram matrices are the smaller ones
    X = (X / (torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True) + eps)).contiguous()
    n, r, k = X.shape
    # Buffers reused across the iterations: a stack is large, and fresh allocations of that size are
    # fresh pages to fault in on a CPU.
    A, B, Y = X.new_empty(n, r, r), X.new_empty(n, r, r), X.new_empty(n, r, k)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        torch.bmm(X, X.mT, out=A)
        torch.baddbmm(A, A, A, beta=b, alpha=c, out=B)  # b A + c A A
        torch.baddbmm(X, B, X, beta=a, out=Y)  # a X + B X
        X, Y = Y, X
    return (X.mT if transposed else X).to(G.dtype)


def _buckets(params: list[torch.Tensor], key) -> list[list[torch.Tensor]]:
    """``params`` split by ``key(p)``, first-seen order kept."""
    out: dict = {}
    for p in params:
        out.setdefault(key(p), []).append(p)
    return list(out.values())


class Muon(torch.optim.Optimizer):
    """One optimiser with two kinds of parameter groups: ``kind="muon"`` (2-D weights; Nesterov momentum,
    Newton-Schulz orthogonalisation, shape scaling) and ``kind="adam"`` (Adam with bias correction).
    Both support decoupled weight decay. ``lr`` of each group may be changed by a schedule between steps.
    ``foreach`` picks the batched / multi-tensor step (same results as the per-parameter loop, faster); it is
    an attribute of the optimiser, not of its groups, so loading a state dict does not change it. The batched
    step orthogonalises at most ``max_stack`` matrices of one shape per call, which bounds its extra memory."""

    def __init__(self, groups: list[dict], *, lr: float = 1e-3, momentum: float = 0.95, ns_steps: int = 5,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0,
                 ns_dtype=torch.float32, foreach: bool = True, max_stack: int = 32):
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, betas=betas, eps=eps,
                        weight_decay=weight_decay, kind="adam")
        super().__init__(groups, defaults)
        self.ns_dtype = ns_dtype
        self.foreach = foreach
        if max_stack < 1:
            raise PMFError(f"max_stack must be >= 1, got {max_stack}")
        self.max_stack = max_stack  # matrices per batched Newton-Schulz call
        for group in self.param_groups:
            if group["kind"] not in ("muon", "adam"):
                raise PMFError(f"parameter group kind must be 'muon' or 'adam', got {group['kind']!r}")
            if group["kind"] == "muon" and any(p.ndim != 2 for p in group["params"]):
                raise PMFError("Muon groups take only 2-D weight matrices")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["kind"] == "muon":
                (self._muon_foreach if self.foreach else self._muon_single)(group, params)
            else:
                (self._adam_foreach if self.foreach else self._adam_single)(group, params)
        return loss

    def _muon_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["momentum"] = torch.zeros_like(p)
        return state

    def _adam_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float64)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        return state

    def _muon_single(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, beta = group["lr"], group["weight_decay"], group["momentum"]
        for p in params:
            g, m = p.grad, self._muon_state(p)["momentum"]
            if wd:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - beta)  # m <- beta m + (1 - beta) g
            update = newton_schulz(g.lerp(m, beta), group["ns_steps"], dtype=self.ns_dtype)
            p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.shape[0] / p.shape[1])))

    def _muon_foreach(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, beta = group["lr"], group["weight_decay"], group["momentum"]
        buckets = _buckets(params, lambda p: (p.shape, p.dtype, p.device))
        chunks = [ps[i:i + self.max_stack] for ps in buckets for i in range(0, len(ps), self.max_stack)]
        for ps in chunks:  # a bounded stack: its Newton-Schulz buffers are a few of its own size
            grads = [p.grad for p in ps]
            moms = [self._muon_state(p)["momentum"] for p in ps]
            if wd:
                torch._foreach_mul_(ps, 1 - lr * wd)
            torch._foreach_lerp_(moms, grads, 1 - beta)
            nesterov = torch.stack(torch._foreach_lerp(grads, moms, beta))  # [n, m, k]
            update = newton_schulz_batched(nesterov, group["ns_steps"], dtype=self.ns_dtype)
            out, inp = ps[0].shape
            torch._foreach_add_(ps, update.unbind(0), alpha=-lr * math.sqrt(max(1.0, out / inp)))

    def _adam_single(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
        for p in params:
            g, state = p.grad, self._adam_state(p)
            if wd:
                p.mul_(1 - lr * wd)
            state["step"] += 1
            t = float(state["step"])
            state["exp_avg"].lerp_(g, 1 - b1)
            state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(eps)
            p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - b1**t))

    def _adam_foreach(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
        for ps in _buckets(params, lambda p: (p.dtype, p.device)):
            grads = [p.grad for p in ps]
            states = [self._adam_state(p) for p in ps]
            if wd:
                torch._foreach_mul_(ps, 1 - lr * wd)
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            # Step counts may differ within a bucket (a parameter without a gradient skips a step).
            ts = [float(t) for t in steps]
            exp_avg, exp_avg_sq = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            torch._foreach_lerp_(exp_avg, grads, 1 - b1)
            torch._foreach_mul_(exp_avg_sq, b2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - b2)
            denom = torch._foreach_div(exp_avg_sq, [1 - b2**t for t in ts])
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(ps, exp_avg, denom, [-lr / (1 - b1**t) for t in ts])


def split_parameters(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(Muon parameters, Adam parameters): the release's rule, every 2-D array to Muon."""
    muon, adam = [], []
    for p in model.parameters():
        if p.requires_grad:
            (muon if p.ndim == 2 else adam).append(p)
    return muon, adam


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg``; each group records its ``base_lr`` for the schedule."""
    if cfg.name == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                weight_decay=cfg.weight_decay, foreach=cfg.foreach)
    else:
        muon, adam = split_parameters(model)
        groups = [dict(params=muon, kind="muon", lr=cfg.lr),
                  dict(params=adam, kind="adam", lr=cfg.adam_lr if cfg.adam_lr is not None else cfg.lr)]
        opt = Muon([g for g in groups if g["params"]], momentum=cfg.momentum, ns_steps=cfg.ns_steps,
                   betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=cfg.foreach)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    return opt


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): constant (release default), linear
    warmup then constant, or linear warmup then cosine decay to ``min_lr_ratio``."""
    if cfg.schedule == "constant":
        return 1.0
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "warmup":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Apply a schedule factor to every group; returns the first group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
