"""Building blocks of pmfDiT (spec section 5): SwiGLU, the transformer block (with optional activation
checkpointing), embedders and the final layer. Attention lives in ``pmf.nn.attention``, norms and tangent
rules in ``pmf.nn.common``."""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, attention_backend, current_attention_backend
from .common import RMSNorm, linear_tangent, silu_tangent, upcast


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
    under the attention backend of the original call, which it carries over (the backward may run in another
    thread, whose own choice is the default); re-enterable: a retained graph recomputes again."""

    def __init__(self):
        self.backend, self.active, self._backend_ctx = current_attention_backend(), False, None

    def __enter__(self):
        self._backend_ctx = attention_backend(self.backend)
        self._backend_ctx.__enter__()
        self.active = True

    def __exit__(self, *exc):
        self.active = False
        self._backend_ctx.__exit__(*exc)


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

    Built with ``checkpointing`` (activation checkpointing: a construction option, read-only, not in the state
    dict), ``forward`` and ``jvp`` keep only their inputs for backward when gradients are recorded, and the
    backward recomputes the primal alone: the tangent of ``jvp`` is held constant, records no graph and saves
    nothing."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, num_rotated: int, grid_size: int,
                 layout: str = "heads", *, checkpointing: bool = False):
        super().__init__()
        self._checkpointing = bool(checkpointing)
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads, num_rotated, grid_size, layout)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_hidden)
        self.attn_scale = nn.Parameter(torch.zeros(dim))
        self.mlp_scale = nn.Parameter(torch.zeros(dim))

    @property
    def checkpointing(self) -> bool:
        """Whether the block recomputes itself in the backward pass (fixed at construction)."""
        return self._checkpointing

    def forward(self, x: torch.Tensor, tail: int | None = None, dx: torch.Tensor | None = None):
        """The block on x [B, T, D]. With ``tail`` only the last ``tail`` tokens' outputs are computed
        ([B, tail, D], equal to those rows of the full output): a last block whose other rows are discarded
        skips their queries, output projection and MLP. With a tangent ``dx`` it returns ``jvp``'s pair: the
        tangent runs inside the module call, so wrappers' forward hooks (FSDP2 gathers the sharded weights
        there) cover it too."""
        if dx is not None:
            return self._jvp_call(x, dx, tail)
        if self.checkpointing and torch.is_grad_enabled():
            fn = functools.partial(self._forward, tail=tail)
            return checkpointed(fn, fn, x)
        return self._forward(x, tail)

    def _forward(self, x: torch.Tensor, tail: int | None = None) -> torch.Tensor:
        a = self.attn(self.norm1(x), tail)
        x = (x if tail is None else x[:, -tail:]) + a * self.attn_scale
        return x + self.mlp(self.norm2(x)) * self.mlp_scale

    def jvp(self, x: torch.Tensor, dx: torch.Tensor, tail: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(block(x), its tangent along dx), ``tail`` as in ``forward``; the tangent carries no graph. Runs
        through the module call (``self(x, tail, dx)``)."""
        return self(x, tail=tail, dx=dx)

    def _jvp_call(self, x: torch.Tensor, dx: torch.Tensor, tail: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.checkpointing and torch.is_grad_enabled():
            # _jvp's primal saves what _forward saves, in the same order (tests/nn/test_activation_checkpointing.py)
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
