"""Building blocks of pmfDiT (spec section 5): norms, rotary embedding, attention, SwiGLU, embedders."""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

# Attention backend: "sdpa" (fused kernels, no forward-mode AD rule on most backends) or "math"
# (matmul + softmax, supports forward-mode AD). The objective switches to "math" around its JVP.
_ATTN_BACKEND = "sdpa"


@contextlib.contextmanager
def attention_backend(name: str):
    """Temporarily select the attention implementation: ``"sdpa"`` or ``"math"``."""
    global _ATTN_BACKEND
    if name not in ("sdpa", "math"):
        raise ValueError(f"attention backend must be 'sdpa' or 'math', got {name!r}")
    previous, _ATTN_BACKEND = _ATTN_BACKEND, name
    try:
        yield
    finally:
        _ATTN_BACKEND = previous


def current_attention_backend() -> str:
    return _ATTN_BACKEND


# Tangent of attention in ``Attention.jvp``: "math" (exact, materialises [B, H, T, T]) or "triton" (the fused
# kernel of ``pmf.nn.triton_attention``: O(T) memory, equal up to float rounding; CUDA or TRITON_INTERPRET=1).
_TANGENT_ATTN = "math"


@contextlib.contextmanager
def tangent_attention(name: str):
    """Temporarily select the attention tangent of ``Attention.jvp``: ``"math"`` or ``"triton"``."""
    global _TANGENT_ATTN
    if name not in ("math", "triton"):
        raise ValueError(f"tangent attention must be 'math' or 'triton', got {name!r}")
    previous, _TANGENT_ATTN = _TANGENT_ATTN, name
    try:
        yield
    finally:
        _TANGENT_ATTN = previous


def current_tangent_attention() -> str:
    return _TANGENT_ATTN


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32 (norms, rotations and softmax stay in fp32 as in the release);
    float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = upcast(x)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.to(x.dtype)).to(dtype)

    def jvp(self, x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, dy): y = forward(x) (with autograd as enabled), dy = its tangent along dx (no graph):
        dy = w rs (dx - x rs^2 mean(x dx)), rs = rsqrt(mean(x^2) + eps)."""
        y = self.forward(x)
        with torch.no_grad():
            xf, dxf = upcast(x), upcast(dx)
            rs = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            dy = (dxf - xf * (rs * rs * (xf * dxf).mean(-1, keepdim=True))) * rs * self.weight.to(xf.dtype)
        return y, dy.to(dx.dtype)


def linear_tangent(layer: nn.Linear, dx: torch.Tensor) -> torch.Tensor:
    """Tangent of a linear layer (the bias drops out); call under no_grad."""
    return F.linear(dx, layer.weight)


def silu_tangent(a: torch.Tensor, da: torch.Tensor) -> torch.Tensor:
    """d silu(a) = sigmoid(a) (1 + a (1 - sigmoid(a))) da."""
    s = torch.sigmoid(a)
    return s * (1 + a * (1 - s)) * da


def rope_angles(grid_size: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles [grid^2, head_dim/2] of the release's 2D RoPE: slots j < hd/4 rotate with the row, the rest
    with the column, frequency f_k = theta^(-4k/head_dim). Patches are row-major."""
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64) * 4.0 / head_dim)  # (hd/4,)
    pos = torch.arange(grid_size, dtype=torch.float64)
    rows = pos.repeat_interleave(grid_size)  # (T,) row index of each patch
    cols = pos.repeat(grid_size)  # (T,)
    return torch.cat([rows[:, None] * freqs[None], cols[:, None] * freqs[None]], dim=1)  # (T, hd/2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent feature pairs (2j, 2j+1) of x [B, H, T, hd] by angles with cos/sin [T, hd/2]."""
    a, b = upcast(x).unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos.to(a.dtype), sin.to(a.dtype)  # (B, H, T, hd/2) each
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (B, H, T, hd/2, 2)
    return out.flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention: bias-free projections, per-head q/k RMSNorm, RoPE on the last
    ``num_rotated`` tokens (the image patches) only."""

    def __init__(self, dim: int, num_heads: int, num_rotated: int, grid_size: int):
        super().__init__()
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

    def forward(self, x: torch.Tensor, tail: int | None = None) -> torch.Tensor:
        """Attention over all T tokens of x [B, T, D]; with ``tail`` only the last ``tail`` tokens (image
        patches) are queried: the output is [B, tail, D], equal to the last rows of the full output."""
        B, T, D = x.shape
        self._check_tail(tail, T)
        xq = x if tail is None else x[:, -tail:]
        Tq = xq.shape[1]
        q = self.q_norm(self.q_proj(xq).view(B, Tq, self.num_heads, self.head_dim))  # (B, Tq, H, hd)
        k = self.k_norm(self.k_proj(x).view(B, T, self.num_heads, self.head_dim))  # (B, T, H, hd)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim)  # (B, T, H, hd)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T or Tq, hd)
        q, k = self._rotate(q), self._rotate(k)
        if _ATTN_BACKEND == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)  # (B, H, Tq, hd)
        else:
            out = math_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(B, Tq, D))  # (B, Tq, D)

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
        out = F.scaled_dot_product_attention(q, k, v) if _ATTN_BACKEND == "sdpa" else math_attention(q, k, v)
        y = self.out_proj(out.transpose(1, 2).reshape(B, Tq, D))
        with torch.no_grad():
            dv = heads(linear_tangent(self.v_proj, dx)).transpose(1, 2)
            dq, dk = self._rotate(dq.transpose(1, 2)), self._rotate(dk.transpose(1, 2))
            if _TANGENT_ATTN == "triton":
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


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v with a float32 softmax; differentiable in forward and reverse mode."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (B, H, T, T)
    probs = torch.softmax(upcast(scores), dim=-1).to(v.dtype)
    return torch.matmul(probs, v)  # (B, H, T, hd)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

    def jvp(self, x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the primal runs forward's autograd ops in forward's order: a checkpointed Block recomputes its
        # saved tensors with forward
        a = self.w1(x)
        s = F.silu(a)
        b = self.w3(x)
        y = self.w2(s * b)
        with torch.no_grad():
            a, s, b = a.detach(), s.detach(), b.detach()
            da, db = linear_tangent(self.w1, dx), linear_tangent(self.w3, dx)
            dh = silu_tangent(a, da) * b + s * db
            dy = linear_tangent(self.w2, dh)
        return y, dy


class _Recomputation:
    """Second context of ``checkpoint(context_fn=...)``: marks a block's backward recomputation and runs it
    under the attention backend of the original call (re-enterable: a retained graph recomputes again)."""

    def __init__(self):
        self.backend, self.active = _ATTN_BACKEND, False

    def __enter__(self):
        global _ATTN_BACKEND
        self.active, self.previous, _ATTN_BACKEND = True, _ATTN_BACKEND, self.backend

    def __exit__(self, *exc):
        global _ATTN_BACKEND
        self.active, _ATTN_BACKEND = False, self.previous


def checkpointed(fn, recompute, *args):
    """``fn(*args)`` keeping only ``args`` for backward, where ``recompute(*args)`` rebuilds the saved tensors
    (it must save the same tensors in the same order as ``fn``; non-reentrant checkpointing checks their
    shapes). Under ``torch.compile`` the compiler chooses what to recompute."""
    from torch.utils.checkpoint import checkpoint

    if torch.compiler.is_compiling():
        return checkpoint(fn, *args, use_reentrant=False)
    again = _Recomputation()

    def run(*a):
        return (recompute if again.active else fn)(*a)

    return checkpoint(run, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), again))


class Block(nn.Module):
    """Pre-norm transformer block whose residual branches are scaled by zero-initialised gates.

    With ``checkpointing`` set (a plain attribute, not in the state dict), ``forward`` and ``jvp`` keep only
    their inputs for backward when gradients are recorded, and the backward recomputes the primal alone: the
    tangent of ``jvp`` is held constant, records no graph and saves nothing."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, num_rotated: int, grid_size: int):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads, num_rotated, grid_size)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_hidden)
        self.attn_scale = nn.Parameter(torch.zeros(dim))
        self.mlp_scale = nn.Parameter(torch.zeros(dim))
        self.checkpointing = False

    def forward(self, x: torch.Tensor, tail: int | None = None) -> torch.Tensor:
        """The block on x [B, T, D]. With ``tail`` only the last ``tail`` tokens' outputs are computed
        ([B, tail, D], equal to those rows of the full output): a last block whose other rows are discarded
        skips their queries, output projection and MLP."""
        if self.checkpointing and torch.is_grad_enabled():
            fn = functools.partial(self._forward, tail=tail)
            return checkpointed(fn, fn, x)
        return self._forward(x, tail)

    def _forward(self, x: torch.Tensor, tail: int | None = None) -> torch.Tensor:
        a = self.attn(self.norm1(x), tail)
        x = (x if tail is None else x[:, -tail:]) + a * self.attn_scale
        return x + self.mlp(self.norm2(x)) * self.mlp_scale

    def jvp(self, x: torch.Tensor, dx: torch.Tensor, tail: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(block(x), its tangent along dx), ``tail`` as in ``forward``; the tangent carries no graph."""
        if self.checkpointing and torch.is_grad_enabled():
            # _jvp's primal saves what _forward saves, in the same order (tests/test_checkpointing.py)
            return checkpointed(functools.partial(self._jvp, tail=tail),
                                lambda x, dx: (self._forward(x, tail), dx), x, dx)
        return self._jvp(x, dx, tail)

    def _jvp(self, x: torch.Tensor, dx: torch.Tensor, tail: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        a, da = self.attn.jvp(*self.norm1.jvp(x, dx), tail)
        if tail is not None:
            x, dx = x[:, -tail:], dx[:, -tail:]
        x = x + a * self.attn_scale
        with torch.no_grad():
            dx = dx + da * self.attn_scale
        m, dm = self.mlp.jvp(*self.norm2.jvp(x, dx))
        with torch.no_grad():
            dx = dx + dm * self.mlp_scale
        return x + m * self.mlp_scale, dx


class ScalarEmbedder(nn.Module):
    """Sinusoidal features [cos(s f_k), sin(s f_k)], f_k = 10000^(-k/(dim/2)), then Linear-SiLU-Linear."""

    def __init__(self, hidden: int, freq_dim: int = 256, max_period: float = 10000.0):
        super().__init__()
        half = freq_dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        s = upcast(s) if s.is_floating_point() else s.float()
        args = s[:, None] * self.freqs.to(s.dtype)[None]  # (B, freq_dim/2)
        feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, freq_dim)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))  # (B, D)

    def tangent(self, s: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
        """Tangent [B, D] of the embedding along a scalar tangent ds [B]; call under no_grad."""
        s, ds = upcast(s), upcast(ds)
        freqs = self.freqs.to(s.dtype)[None]
        args, dargs = s[:, None] * freqs, ds[:, None] * freqs  # (B, freq_dim/2)
        dtype = self.mlp[0].weight.dtype
        feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype)
        dfeats = torch.cat([-torch.sin(args) * dargs, torch.cos(args) * dargs], dim=-1).to(dtype)
        da = silu_tangent(self.mlp[0](feats), linear_tangent(self.mlp[0], dfeats))
        return linear_tangent(self.mlp[2], da)


class LabelEmbedder(nn.Module):
    """Class table with ``num_classes + 1`` rows; the last row is the null (unconditional) label."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    """Bottleneck patch embedding: p x p stride-p conv to ``bottleneck`` channels, then a 1x1 conv."""

    def __init__(self, patch: int, in_channels: int, bottleneck: int, hidden: int):
        super().__init__()
        self.proj1 = nn.Conv2d(in_channels, bottleneck, patch, stride=patch)
        self.proj2 = nn.Conv2d(bottleneck, hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(x)).flatten(2).transpose(1, 2)  # (B, T, D), row-major patches

    def tangent(self, dx: torch.Tensor) -> torch.Tensor:
        """Tangent of the (affine) embedding along dx; call under no_grad."""
        p1, p2 = self.proj1, self.proj2
        d = F.conv2d(F.conv2d(dx, p1.weight, None, p1.stride), p2.weight)
        return d.flatten(2).transpose(1, 2)  # (B, T, D)


class FinalLayer(nn.Module):
    """RMSNorm then a (zero-initialised) linear map of each token to p*p*C values."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm = RMSNorm(hidden)
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))

    def jvp(self, x: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, dy = self.norm.jvp(x, dx)
        with torch.no_grad():
            dy = linear_tangent(self.linear, dy)
        return self.linear(y), dy
