"""A re-creation of the computation of the released PyTorch inference port, written from the semantics
in the fixtures README (spec section 5). It is the baseline of ``benchmarks/inference.py`` and a second,
independent check of our network: float32 throughout, a hand-written einsum softmax attention, RoPE as a
complex multiplication through ``torch.view_as_complex``, and the release's module tree, so that a
release state dict (``._flax_linear`` keys, complex ``rope_freqs`` buffer) loads as is.

``ReleasePortNet(x, t, h, omega, t_min, t_max, y) -> (u, v)`` returns velocities, as the release does:
u = (x - x_hat_u) / max(t, 0.05) (the port clamps from below only)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pmf.model_configs import ModelConfig
from pmf.nn.release import release_rope_freqs, strip_prefix


class _Linear(nn.Module):
    """A linear layer one level down (``<name>._flax_linear.weight``), as in the release's key names."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self._flax_linear = nn.Linear(n_in, n_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._flax_linear(x)


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(_Linear(freq_dim, hidden), nn.SiLU(), _Linear(hidden, hidden))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=s.device) / half)
        args = s.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class _LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.embedding_table = nn.Module()
        self.embedding_table._flax_embedding = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table._flax_embedding(y)


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_channels: int, bottleneck: int, hidden: int):
        super().__init__()
        self.proj1 = nn.Conv2d(in_channels, bottleneck, patch, stride=patch)
        self.proj2 = nn.Conv2d(bottleneck, hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(x)).flatten(2).transpose(1, 2)


def complex_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, hd] times the complex unit numbers freqs [T, hd/2], pairs (2j, 2j+1) as complex j."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, H, hd/2)
    return torch.view_as_real(xc * freqs[None, :, None, :]).flatten(-2).type_as(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj = _Linear(dim, dim, bias=False)
        self.k_proj = _Linear(dim, dim, bias=False)
        self.v_proj = _Linear(dim, dim, bias=False)
        self.out_proj = _Linear(dim, dim, bias=False)
        self.q_norm = _RMSNorm(self.head_dim)
        self.k_norm = _RMSNorm(self.head_dim)

    def forward(self, x: torch.Tensor, rope_freqs: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        n = rope_freqs.shape[0]
        q = self.q_norm(self.q_proj(x).reshape(B, T, self.num_heads, self.head_dim))  # (B, T, H, hd)
        k = self.k_norm(self.k_proj(x).reshape(B, T, self.num_heads, self.head_dim))
        v = self.v_proj(x).reshape(B, T, self.num_heads, self.head_dim)
        q = torch.cat([q[:, :-n], complex_rope(q[:, -n:], rope_freqs)], dim=1)
        k = torch.cat([k[:, :-n], complex_rope(k[:, -n:], rope_freqs)], dim=1)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)  # (B, H, T, T)
        probs = torch.softmax(scores, dim=-1)
        out = torch.einsum("bhqk,bkhd->bqhd", probs, v)  # (B, T, H, hd)
        return self.out_proj(out.reshape(B, T, D))


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = _Linear(dim, hidden, bias=False)
        self.w2 = _Linear(hidden, dim, bias=False)
        self.w3 = _Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = _RMSNorm(dim)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = _RMSNorm(dim)
        self.mlp = _SwiGLU(dim, mlp_hidden)
        self.attn_scale = nn.Parameter(torch.zeros(dim))
        self.mlp_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, rope_freqs: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope_freqs) * self.attn_scale
        return x + self.mlp(self.norm2(x)) * self.mlp_scale


class _FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm = _RMSNorm(hidden)
        self.linear = _Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


class ReleasePortNet(nn.Module):
    """The released port's pmfDiT computation; ``eval_mode=True`` builds the u-head only (inference)."""

    def __init__(self, config: ModelConfig, eval_mode: bool = False):
        super().__init__()
        c = self.config = config
        D = c.hidden_size
        self.eval_mode = eval_mode
        self.x_embedder = _PatchEmbed(c.patch_size, c.in_channels, c.bottleneck, D)
        self.h_embedder = _TimestepEmbedder(D)
        self.omega_embedder = _TimestepEmbedder(D)
        self.cfg_t_start_embedder = _TimestepEmbedder(D)
        self.cfg_t_end_embedder = _TimestepEmbedder(D)
        self.y_embedder = _LabelEmbedder(c.num_classes, D)
        self.class_tokens = nn.Parameter(torch.zeros(1, c.class_tokens, D))
        self.omega_tokens = nn.Parameter(torch.zeros(1, c.omega_tokens, D))
        self.t_min_tokens = nn.Parameter(torch.zeros(1, c.interval_tokens, D))
        self.t_max_tokens = nn.Parameter(torch.zeros(1, c.interval_tokens, D))
        self.time_tokens = nn.Parameter(torch.zeros(1, c.time_tokens, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_prefix_tokens + c.num_patches, D))
        self.register_buffer("rope_freqs", release_rope_freqs(c))

        def blocks(n):
            return nn.ModuleList(_Block(D, c.num_heads, c.mlp_hidden) for _ in range(n))

        out_dim = c.patch_size**2 * c.in_channels
        self.shared_blocks = blocks(c.shared_depth)
        self.u_heads = blocks(c.aux_head_depth)
        self.u_final_layer = _FinalLayer(D, out_dim)
        if not eval_mode:
            self.v_heads = blocks(c.aux_head_depth)
            self.v_final_layer = _FinalLayer(D, out_dim)

    def load_release(self, state_dict: dict) -> ReleasePortNet:
        """Load a release state dict (optional ``net.`` prefix); extra v-head keys are ignored in eval mode."""
        sd = strip_prefix(state_dict)
        if self.eval_mode:
            sd = {k: v for k, v in sd.items() if not k.startswith(("v_heads.", "v_final_layer."))}
        self.load_state_dict(sd, strict=True)
        return self

    def _unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.config
        B, g, p = tokens.shape[0], c.grid_size, c.patch_size
        x = tokens.reshape(B, g, g, p, p, c.in_channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(B, c.in_channels, g * p, g * p)

    def forward(self, x, t, h, omega, t_min, t_max, y):
        B = x.shape[0]
        groups = [
            (self.class_tokens, self.y_embedder(y)),
            (self.omega_tokens, self.omega_embedder(1.0 - 1.0 / omega)),
            (self.t_min_tokens, self.cfg_t_start_embedder(t_min)),
            (self.t_max_tokens, self.cfg_t_end_embedder(t_max)),
            (self.time_tokens, self.h_embedder(h)),
        ]
        seq = [tok.expand(B, -1, -1) + emb[:, None] for tok, emb in groups]
        seq = torch.cat([*seq, self.x_embedder(x)], dim=1) + self.pos_embed
        for block in self.shared_blocks:
            seq = block(seq, self.rope_freqs)
        n = self.config.num_patches
        scale = t.clamp(min=0.05).view(-1, 1, 1, 1)

        def head(blocks, final):
            s = seq
            for block in blocks:
                s = block(s, self.rope_freqs)
            return (x - self._unpatchify(final(s[:, -n:]))) / scale

        u = head(self.u_heads, self.u_final_layer)
        v = None if self.eval_mode else head(self.v_heads, self.v_final_layer)
        return u, v


@torch.no_grad()
def release_generate(net: ReleasePortNet, noise: torch.Tensor, labels: torch.Tensor, *, steps: int = 1,
                     omega: float = 1.0, t_min: float = 0.0, t_max: float = 1.0) -> torch.Tensor:
    """The release sampler: z <- z - (t - r) u(z, t, h = t - r, ...) on linspace(1, 0, steps + 1);
    ``noise`` is already multiplied by the noise scale."""
    B, dev = noise.shape[0], noise.device
    grid = torch.linspace(1.0, 0.0, steps + 1, device=dev)
    full = [torch.full((B,), float(v), device=dev) for v in (omega, t_min, t_max)]
    z = noise
    for i in range(steps):
        t, r = grid[i].expand(B), grid[i + 1].expand(B)
        u, _ = net(z, t, t - r, *full, labels)
        z = z - (t - r).view(-1, 1, 1, 1) * u
    return z
