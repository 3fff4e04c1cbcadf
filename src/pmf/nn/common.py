"""Elementwise pieces of pmfDiT shared by its layers: float32 upcasting, RMSNorm, RoPE's rotation and the tangent
rules of linear maps and SiLU (used by the explicit forward-mode passes, ``jvp`` / ``tangent`` methods)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
        if x.dtype == torch.float32 and torch.compiler.is_exporting():
            # the same formula as one op: an ONNX export (opset >= 23) writes one RMSNormalization node, not six
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
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


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent feature pairs (2j, 2j+1) of x [B, H, T, hd] by angles with cos/sin [T, hd/2] (or any
    x [..., hd] with cos/sin broadcastable to [..., hd/2])."""
    a, b = upcast(x).unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos.to(a.dtype), sin.to(a.dtype)  # (B, H, T, hd/2) each
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (B, H, T, hd/2, 2)
    return out.flatten(-2).to(x.dtype)
