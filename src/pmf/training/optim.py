"""Optimisers for pMF training (spec section 6): the release's optimiser, ``optax.contrib.muon(lr,
adam_b2=0.95)`` with its defaults, as ``Muon``; AdamW for the ablation; learning-rate schedules.

Muon side (2-D arrays in the release's flax layout): ``mu <- beta mu + (1 - beta) g``, optax's bias-corrected
Nesterov ``beta mu / (1 - beta^(t+1)) + (1 - beta) g / (1 - beta^t)``, 5 Newton-Schulz steps, the factor
``sqrt(max(1, fan_out / fan_in))``. Adam side (every other array): NAdam-style Adam with betas (0.9, 0.95).
``tests/training/test_optim.py`` holds both step paths (per-parameter loop and batched) against the optax trajectory
in ``tests/fixtures/official/optim_traj_tiny.npz``; docs/training.md lists what remains different.
"""

from __future__ import annotations

import math

import torch

from ..errors import PMFError
from .config import OptimConfig

NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Written into every parameter group: optimiser state saved under another rule (the earlier Muon of this
# package: no bias correction, plain Adam, the class table on Muon) is refused on loading.
RULE = "optax-muon"


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


def muon_momentum_(params: list[torch.Tensor], grads: list[torch.Tensor], moms: list[torch.Tensor], ts: list[float],
                   *, lr: float, wd: float, beta: float) -> list[torch.Tensor]:
    """The elementwise part of a Muon step on lists of plain tensors (whole matrices, or matching row shards
    of them): decoupled weight decay of ``params``, ``m <- beta m + (1 - beta) g`` in place, and the
    bias-corrected Nesterov mix ``beta m / (1 - beta^(t+1)) + (1 - beta) g / (1 - beta^t)`` (returned), with
    ``ts`` the step counts after this step."""
    if wd:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_lerp_(moms, grads, 1 - beta)
    nesterov = torch._foreach_mul(moms, [beta / (1 - beta ** (t + 1)) for t in ts])
    torch._foreach_add_(nesterov, torch._foreach_mul(grads, [(1 - beta) / (1 - beta**t) for t in ts]))
    return nesterov


def adam_update_(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
                 exp_avg_sq: list[torch.Tensor], ts: list[float], *, lr: float, wd: float, eps: float,
                 betas: tuple[float, float]) -> None:
    """One NAdam-style Adam step (the Muon optimiser's Adam side) on lists of plain tensors, in place; ``ts``
    are the step counts after this step. Elementwise, so whole tensors and shards give the same result."""
    b1, b2 = betas
    if wd:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_lerp_(exp_avg, grads, 1 - b1)
    torch._foreach_mul_(exp_avg_sq, b2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - b2)
    m_hat = torch._foreach_mul(exp_avg, [b1 / (1 - b1 ** (t + 1)) for t in ts])
    torch._foreach_add_(m_hat, torch._foreach_mul(grads, [(1 - b1) / (1 - b1**t) for t in ts]))
    denom = torch._foreach_div(exp_avg_sq, [1 - b2**t for t in ts])
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, m_hat, denom, -lr)


class Muon(torch.optim.Optimizer):
    """The release's optimiser, with two kinds of parameter groups.

    - ``kind="muon"`` (2-D weights): momentum ``m <- beta m + (1 - beta) g``; the bias-corrected Nesterov mix
      ``beta m / (1 - beta^(t+1)) + (1 - beta) g / (1 - beta^t)`` is orthogonalised by Newton-Schulz and
      scaled by ``sqrt(max(1, out / in))``.
    - ``kind="adam"``: NAdam-style Adam, ``m_hat = b1 m / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)``,
      ``v_hat = v / (1 - b2^t)``, update ``m_hat / (sqrt(v_hat) + eps)``.

    Both support decoupled weight decay (0 in the release). ``lr`` of each group may be changed by a schedule
    between steps. ``foreach`` picks the batched / multi-tensor step (same results as the per-parameter loop,
    faster); it is an attribute of the optimiser, not of its groups, so loading a state dict does not change
    it. The batched step orthogonalises at most ``max_stack`` matrices of one shape per call, which bounds its
    extra memory. Step counts are kept per parameter, so a parameter without a gradient skips a step."""

    collective_muon = False  # True: a Muon group's step is a collective, entered even without local gradients

    def __init__(self, groups: list[dict], *, lr: float = 1e-3, momentum: float = 0.95, ns_steps: int = 5,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0,
                 ns_dtype=torch.float32, foreach: bool = True, max_stack: int = 32):
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, betas=betas, eps=eps,
                        weight_decay=weight_decay, kind="adam", rule=RULE)
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

    def load_state_dict(self, state_dict: dict) -> None:
        check_rule(self, [g.get("rule") for g in state_dict.get("param_groups", [])])
        try:
            super().load_state_dict(state_dict)
        except ValueError as err:
            raise PMFError(f"the optimiser state does not fit this model's parameter groups: {err}") from None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params and not (group["kind"] == "muon" and self.collective_muon):
                continue
            if group["kind"] == "muon":
                (self._muon_foreach if self.foreach else self._muon_single)(group, params)
            else:
                (self._adam_foreach if self.foreach else self._adam_single)(group, params)
        return loss

    def _state(self, p: torch.Tensor, *names: str) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float64)
            for name in names:
                state[name] = torch.zeros_like(p)
        return state

    def _next_steps(self, params: list[torch.Tensor], *names: str) -> tuple[list[dict], list[float]]:
        """The state of each parameter with its step count advanced, and the new counts."""
        states = [self._state(p, *names) for p in params]
        for s in states:
            s["step"] += 1
        return states, [float(s["step"]) for s in states]

    def _muon_single(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, beta = group["lr"], group["weight_decay"], group["momentum"]
        states, ts = self._next_steps(params, "momentum")
        for p, state, t in zip(params, states, ts):
            g, m = p.grad, state["momentum"]
            if wd:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - beta)  # m <- beta m + (1 - beta) g
            nesterov = m * (beta / (1 - beta ** (t + 1))) + g * ((1 - beta) / (1 - beta**t))
            update = newton_schulz(nesterov, group["ns_steps"], dtype=self.ns_dtype)
            p.add_(update, alpha=-lr * math.sqrt(max(1.0, p.shape[0] / p.shape[1])))

    def _muon_foreach(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, beta = group["lr"], group["weight_decay"], group["momentum"]
        buckets = _buckets(params, lambda p: (p.shape, p.dtype, p.device))
        chunks = [ps[i:i + self.max_stack] for ps in buckets for i in range(0, len(ps), self.max_stack)]
        for ps in chunks:  # a bounded stack: its Newton-Schulz buffers are a few of its own size
            states, ts = self._next_steps(ps, "momentum")
            nesterov = muon_momentum_(ps, [p.grad for p in ps], [s["momentum"] for s in states], ts, lr=lr, wd=wd,
                                      beta=beta)
            update = newton_schulz_batched(torch.stack(nesterov), group["ns_steps"], dtype=self.ns_dtype)
            out, inp = ps[0].shape
            torch._foreach_add_(ps, update.unbind(0), alpha=-lr * math.sqrt(max(1.0, out / inp)))

    def _adam_single(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
        states, ts = self._next_steps(params, "exp_avg", "exp_avg_sq")
        for p, state, t in zip(params, states, ts):
            g, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
            if wd:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat = m * (b1 / (1 - b1 ** (t + 1))) + g * ((1 - b1) / (1 - b1**t))
            denom = (v / (1 - b2**t)).sqrt_().add_(eps)
            p.addcdiv_(m_hat, denom, value=-lr)

    def _adam_foreach(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
        for ps in _buckets(params, lambda p: (p.dtype, p.device)):
            states, ts = self._next_steps(ps, "exp_avg", "exp_avg_sq")
            adam_update_(ps, [p.grad for p in ps], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                         ts, lr=lr, wd=wd, eps=eps, betas=(b1, b2))


def check_rule(optimizer: torch.optim.Optimizer, rules: list) -> None:
    """Refuse, for a ``Muon``, optimiser state whose parameter groups record ``rules`` other than ``RULE``."""
    if isinstance(optimizer, Muon) and set(rules) != {RULE}:
        raise PMFError(
            "this optimiser state was saved by an earlier version of pixel-meanflow's Muon (the class table "
            "on Muon, Nesterov without bias correction, plain Adam), which is not the release's optimiser; "
            "it cannot continue under the current one. Start a new run, or keep the weights by exporting "
            "them (pmf export) and fine-tuning from there")


def split_parameters(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(Muon parameters, Adam parameters) by the release's rule: an array that is 2-D in the release's flax
    layout goes to Muon. That is every linear weight; the class-embedding table is stored [1, N, D] there
    (3-D), so it goes to Adam with the convolutions (4-D), tokens (3-D), norms, gates and biases (1-D)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    muon, adam = [], []
    for p in model.parameters():
        if p.requires_grad:
            (muon if p.ndim == 2 and id(p) not in tables else adam).append(p)
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
