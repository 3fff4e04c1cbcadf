"""Attention of pmfDiT (spec section 5): 2D RoPE, multi-head self-attention with q/k RMSNorm, its explicit
tangent, the scoped choices of the attention kernel (SDPA or math) and of the tangent's implementation (math or
the Triton kernel of ``pmf.nn.triton_attention``), and the layouts (per head, or per token for ONNX)."""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PMFError
from ..vocabulary import TANGENT_ATTENTIONS
from .common import RMSNorm, apply_rope, linear_tangent, upcast

_DYNAMO_TRACES_CONTEXTVARS = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 14)


class _Choice:
    """A choice among named implementations that belongs to a computation, not to the process: a context
    variable, so a ``with`` block changes it for the code it runs (its thread, its asyncio task) only. Another
    thread, such as the server's batcher, keeps its own value. ``torch.compile`` reads it without a graph break
    and guards on it (a change recompiles; tests/nn/test_attention_choices.py). Dynamo traces ``ContextVar.get``
    from torch 2.14 on; on older torch a compiled network reads ``mirror``, the value of the innermost ``with``
    block of any thread (process-wide while compiling there), so that ``fullgraph=True`` still holds."""

    def __init__(self, what: str, choices: tuple[str, ...]):
        self.what, self.choices = what, choices
        self.var = contextvars.ContextVar(f"pmf_{what.replace(' ', '_')}", default=choices[0])
        self.mirror = choices[0]

    @property
    def value(self) -> str:
        if not _DYNAMO_TRACES_CONTEXTVARS and torch.compiler.is_compiling():
            return self.mirror
        return self.var.get()

    @contextlib.contextmanager
    def use(self, name: str):
        if name not in self.choices:
            raise ValueError(f"{self.what} must be {' or '.join(map(repr, self.choices))}, got {name!r}")
        token, self.mirror = self.var.set(name), name
        try:
            yield
        finally:
            self.var.reset(token)
            self.mirror = self.var.get()  # this thread's value again (threads leaving out of order cannot stick)


# Attention backend: "sdpa" (fused kernels, no forward-mode AD rule on most backends) or "math"
# (matmul + softmax, supports forward-mode AD). The objective selects "math" around its JVP.
ATTENTION_BACKENDS = ("sdpa", "math")
_BACKEND = _Choice("attention backend", ATTENTION_BACKENDS)
# Tangent of attention in ``Attention.jvp``: "math" (exact, materialises [B, H, T, T]) or "triton" (the fused
# kernel of ``pmf.nn.triton_attention``: O(T) memory, equal up to float rounding; CUDA or TRITON_INTERPRET=1).
_TANGENT = _Choice("tangent attention", TANGENT_ATTENTIONS)

# Layout of the attention computation, a property of the network (``PMFDiT(..., attention_layout=)``):
# "heads" ([B, H, T, hd]; every training and sampling path) or "tokens" ([B, T, H * hd] through the custom ops
# of ``pmf.nn.token_ops``; the ONNX export builds its network so and writes each as one node).
ATTENTION_LAYOUTS = ("heads", "tokens")


def check_layout(layout: str) -> str:
    if layout not in ATTENTION_LAYOUTS:
        raise PMFError(f"attention layout must be {' or '.join(map(repr, ATTENTION_LAYOUTS))}, got {layout!r}")
    return layout


def attention_backend(name: str):
    """Select the attention implementation for the code inside the ``with`` block (this thread or task only):
    ``"sdpa"`` (default) or ``"math"``."""
    return _BACKEND.use(name)


def current_attention_backend() -> str:
    return _BACKEND.value


def tangent_attention(name: str):
    """Select the attention tangent of ``Attention.jvp`` for the code inside the ``with`` block (this thread
    or task only): ``"math"`` (default) or ``"triton"``."""
    return _TANGENT.use(name)


def current_tangent_attention() -> str:
    return _TANGENT.value


def rope_angles(grid_size: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles [grid^2, head_dim/2] of the release's 2D RoPE: slots j < hd/4 rotate with the row, the rest
    with the column, frequency f_k = theta^(-4k/head_dim). Patches are row-major."""
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64) * 4.0 / head_dim)  # (hd/4,)
    pos = torch.arange(grid_size, dtype=torch.float64)
    rows = pos.repeat_interleave(grid_size)  # (T,) row index of each patch
    cols = pos.repeat(grid_size)  # (T,)
    return torch.cat([rows[:, None] * freqs[None], cols[:, None] * freqs[None]], dim=1)  # (T, hd/2)


class Attention(nn.Module):
    """Multi-head self-attention: bias-free projections, per-head q/k RMSNorm, RoPE on the last
    ``num_rotated`` tokens (the image patches) only, on the ``layout`` of ``ATTENTION_LAYOUTS``."""

    def __init__(self, dim: int, num_heads: int, num_rotated: int, grid_size: int, layout: str = "heads"):
        super().__init__()
        self.layout = check_layout(layout)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.num_rotated = num_rotated
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        angles = rope_angles(grid_size, self.head_dim)
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        """RoPE on the last ``num_rotated`` positions of x [B, H, L, hd]; L may be shorter (the last L)."""
        n, L = self.num_rotated, x.shape[2]
        if L <= n:
            return apply_rope(x, self.rope_cos[n - L:], self.rope_sin[n - L:])
        rotated = apply_rope(x[:, :, -n:], self.rope_cos, self.rope_sin)  # (B, H, n, hd)
        return torch.cat([x[:, :, :-n], rotated], dim=2)  # (B, H, T, hd)

    def _check_tail(self, tail: int | None, T: int) -> None:
        if tail is not None and not 0 < tail <= min(self.num_rotated, T):
            raise ValueError(f"tail must be in [1, {min(self.num_rotated, T)}], got {tail}")

    def _heads(self, x: torch.Tensor, tail: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q of the last ``tail`` rows of x [B, T, D] (all with None) and k, after their RMSNorms, and v: each
        [B, L, H, hd] (L = tail or T)."""
        B, T, _ = x.shape
        self._check_tail(tail, T)
        xq = x if tail is None else x[:, -tail:]
        q = self.q_norm(self.q_proj(xq).view(B, xq.shape[1], self.num_heads, self.head_dim))  # (B, Tq, H, hd)
        k = self.k_norm(self.k_proj(x).view(B, T, self.num_heads, self.head_dim))  # (B, T, H, hd)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim)  # (B, T, H, hd)
        return q, k, v

    def forward(self, x: torch.Tensor, tail: int | None = None) -> torch.Tensor:
        """Attention over all T tokens of x [B, T, D]; with ``tail`` only the last ``tail`` tokens (image
        patches) are queried: the output is [B, tail, D], equal to the last rows of the full output."""
        if self.layout == "tokens":
            return self._forward_tokens(x, tail)
        q, k, v = (t.transpose(1, 2) for t in self._heads(x, tail))  # (B, H, T or Tq, hd)
        q, k = self._rotate(q), self._rotate(k)
        out = attend(q, k, v)  # (B, H, Tq, hd)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, Tq, D)

    def _forward_tokens(self, x: torch.Tensor, tail: int | None = None) -> torch.Tensor:
        """``forward`` on the token layout [B, T, H * hd]: the same numbers, with RoPE over a table whose rows
        for the unrotated (prefix) tokens are the identity (cos 1, sin 0), and no head transposes."""
        from . import token_ops  # noqa: F401  (registers torch.ops.pmf.*)

        q, k, v = (t.flatten(2) for t in self._heads(x, tail))  # (B, T or Tq, D)
        B, Tq, T = x.shape[0], q.shape[1], k.shape[1]
        H, half = self.num_heads, self.head_dim // 2
        n = min(self.num_rotated, T)
        cos = torch.cat([self.rope_cos.new_ones(T - n, half), self.rope_cos[self.num_rotated - n:]])  # (T, hd/2)
        sin = torch.cat([self.rope_sin.new_zeros(T - n, half), self.rope_sin[self.num_rotated - n:]])
        positions = torch.arange(T, device=x.device).expand(B, T)  # (B, T)
        q = torch.ops.pmf.rotary(q, cos, sin, positions[:, T - Tq:], H)
        k = torch.ops.pmf.rotary(k, cos, sin, positions, H)
        return self.out_proj(torch.ops.pmf.attention(q, k, v, H))  # (B, Tq, D)

    def jvp(self, x: torch.Tensor, dx: torch.Tensor, tail: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, dy) as ``RMSNorm.jvp`` (``tail`` as in ``forward``). The primal uses the selected backend (SDPA
        by default, so it keeps its fused backward); the tangent is computed from detached primals without a
        graph. The primal runs forward's autograd ops in forward's order (checkpointed recomputation)."""
        B, T, D = x.shape
        self._check_tail(tail, T)
        xq, dxq = (x, dx) if tail is None else (x[:, -tail:], dx[:, -tail:])
        Tq = xq.shape[1]

        def heads(t):
            return t.view(B, t.shape[1], self.num_heads, self.head_dim)

        with torch.no_grad():
            dq, dk = heads(linear_tangent(self.q_proj, dxq)), heads(linear_tangent(self.k_proj, dx))
        q, dq = self.q_norm.jvp(heads(self.q_proj(xq)), dq)  # (B, Tq, H, hd) each
        k, dk = self.k_norm.jvp(heads(self.k_proj(x)), dk)
        v = heads(self.v_proj(x))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        q, k = self._rotate(q), self._rotate(k)
        out = attend(q, k, v)
        y = self.out_proj(out.transpose(1, 2).reshape(B, Tq, D))
        with torch.no_grad():
            dv = heads(linear_tangent(self.v_proj, dx)).transpose(1, 2)
            dq, dk = self._rotate(dq.transpose(1, 2)), self._rotate(dk.transpose(1, 2))
            if _TANGENT.value == "triton":
                from .triton_attention import attention_tangent_triton as tangent
            else:
                tangent = attention_tangent
            dout = tangent(q.detach(), k.detach(), v.detach(), dq, dk, dv)
            dy = linear_tangent(self.out_proj, dout.transpose(1, 2).reshape(B, Tq, D))
        return y, dy


def attention_tangent(q, k, v, dq, dk, dv) -> torch.Tensor:
    """Tangent of softmax(q k^T / sqrt(hd)) v along (dq, dk, dv), all [B, H, T, hd], with a float32 softmax:
    dP = P * (dS - rowsum(P * dS)), dO = dP v + P dv."""
    scale = q.shape[-1] ** -0.5
    probs = torch.softmax(upcast(torch.matmul(q, k.transpose(-1, -2)) * scale), dim=-1)  # (B, H, T, T)
    ds = upcast((torch.matmul(dq, k.transpose(-1, -2)) + torch.matmul(q, dk.transpose(-1, -2))) * scale)
    dp = probs * (ds - (probs * ds).sum(-1, keepdim=True))
    return torch.matmul(dp.to(v.dtype), v) + torch.matmul(probs.to(dv.dtype), dv)  # (B, H, T, hd)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v with the selected backend (``attention_backend``)."""
    return F.scaled_dot_product_attention(q, k, v) if _BACKEND.value == "sdpa" else math_attention(q, k, v)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v with a float32 softmax; differentiable in forward and reverse mode."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (B, H, T, T)
    probs = torch.softmax(upcast(scores), dim=-1).to(v.dtype)
    return torch.matmul(probs, v)  # (B, H, T, hd)
