"""RoPE and attention of pmfDiT on the token layout [B, T, H * hd] (heads side by side in the last dim), as two
custom ops: ``pmf::rotary`` and ``pmf::attention``. Their torch bodies compute what ``pmf.nn.attention`` does
on [B, H, T, hd]; the ONNX export (``pmf.export.onnx_export``) writes each as one node (``RotaryEmbedding``, and
``Attention`` in its 3-D form), so that the graph holds no head transposes and no RoPE slicing. A network
uses them only when built with ``attention_layout="tokens"``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import apply_rope


@torch.library.custom_op("pmf::rotary", mutates_args=())
def rotary(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, num_heads: int) -> Tensor:
    """Rotate the adjacent feature pairs (2j, 2j+1) of each head of x [B, L, H * hd] by the angles of row
    ``positions[b, l]`` of cos / sin [P, hd/2] (``pmf.nn.common.apply_rope``'s rotation)."""
    B, L, D = x.shape
    c, s = cos[positions][:, :, None], sin[positions][:, :, None]  # (B, L, 1, hd/2)
    return apply_rope(x.view(B, L, num_heads, -1), c, s).reshape(B, L, D)


@rotary.register_fake
def _(x, cos, sin, positions, num_heads):
    return torch.empty_like(x)


@torch.library.custom_op("pmf::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int) -> Tensor:
    """softmax(q k^T / sqrt(hd)) v per head of q [B, Lq, H * hd] and k, v [B, L, H * hd]: [B, Lq, H * hd]."""
    B, Lq, D = q.shape

    def heads(t):
        return t.view(B, t.shape[1], num_heads, -1).transpose(1, 2)  # (B, H, L, hd)

    return F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(B, Lq, D)


@attention.register_fake
def _(q, k, v, num_heads):
    return torch.empty_like(q)


def onnx_translations() -> dict:
    """The ONNX form of each op, for ``torch.onnx.export(custom_translation_table=...)`` (opset 23)."""
    from onnxscript import opset23 as op

    def rotary_onnx(x, cos, sin, positions, num_heads: int):
        return op.RotaryEmbedding(x, cos, sin, positions, interleaved=1, num_heads=num_heads)

    def attention_onnx(q, k, v, num_heads: int):
        return op.Attention(q, k, v, q_num_heads=num_heads, kv_num_heads=num_heads)[0]

    return {torch.ops.pmf.rotary.default: rotary_onnx, torch.ops.pmf.attention.default: attention_onnx}
