"""Fused tangent of softmax attention in Triton (flash-attention style, O(T) memory).

The tangent of O = softmax(S) V, S = q k^T / sqrt(hd), along (dq, dk, dv) is
dO = dP V + P dV with dP = P * (dS - rowsum(P * dS)), dS = (dq k^T + q dk^T) / sqrt(hd)
(``pmf.nn.attention.attention_tangent`` materialises these [B, H, T, T] tensors). Per query row, with
unnormalised weights p_j = exp(s_j - m) and l = sum_j p_j:

    O = sum_j p_j v_j / l,   mu = sum_j p_j ds_j / l,   dO = sum_j p_j (ds_j v_j + dv_j) / l - mu O,

so one pass over key blocks with an online softmax (running max m, normaliser l, accumulators rescaled
when m grows) gives dO without storing a T x T tile. Forward only: the tangent carries no graph.

Triton is imported when this module is, so ``pmf`` imports it only when the kernel is selected.
``TRITON_INTERPRET=1`` (set before the import) runs the kernel on CPU tensors with Triton's interpreter.
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import PMFError

try:
    import triton
    import triton.language as tl
except ImportError:  # the wrapper raises PMFError when called
    triton = None

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available(*tensors: torch.Tensor) -> bool:
    """True when triton imports and the kernel can run: on CUDA tensors (on any CUDA device when none are
    given), or anywhere under ``TRITON_INTERPRET=1``."""
    if triton is None:
        return False
    if _interpreting():
        return True
    return all(t.is_cuda for t in tensors) if tensors else torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _load_tile(base, rows, offs_d, stride_t, stride_d, mask, UPCAST: tl.constexpr):
        """The [rows, BLOCK_D] tile of one (batch, head) starting at ``base``, 0 outside ``mask``; float32 when
        UPCAST."""
        x = tl.load(base + rows[:, None] * stride_t + offs_d[None, :] * stride_d, mask=mask, other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _key_block(q, dq, k, dk, v, dv, mask_n, m_i, l_i, mu_i, acc_o, acc_t, qk_scale, PRECISION: tl.constexpr):
        """One block of keys folded into the online softmax: the running max ``m_i``, the sums ``l_i`` and
        ``mu_i`` and the accumulators ``acc_o``, ``acc_t`` (rescaled when the max grows), returned updated."""
        kt, dkt = tl.trans(k), tl.trans(dk)
        s = tl.dot(q, kt, input_precision=PRECISION) * (qk_scale * 1.4426950408889634)  # log2(e) s, exp2 below
        s = tl.where(mask_n[None, :], s, float("-inf"))
        ds = tl.dot(dq, kt, input_precision=PRECISION)
        ds = tl.dot(q, dkt, ds, input_precision=PRECISION) * qk_scale

        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # 0 on the first block (m_i = -inf)
        p = tl.exp2(s - m_new[:, None])  # 0 on masked keys
        pds = p * ds
        l_i = l_i * alpha + tl.sum(p, 1)
        mu_i = mu_i * alpha + tl.sum(pds, 1)
        acc_o = tl.dot(p.to(v.dtype), v, acc_o * alpha[:, None], input_precision=PRECISION)
        acc_t = tl.dot(pds.to(v.dtype), v, acc_t * alpha[:, None], input_precision=PRECISION)
        acc_t = tl.dot(p.to(dv.dtype), dv, acc_t, input_precision=PRECISION)
        return m_new, l_i, mu_i, acc_o, acc_t

    @triton.jit
    def _tangent_kernel(
        Q, K, V, DQ, DK, DV, OUT,
        sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
        sdq_b, sdq_h, sdq_t, sdq_d, sdk_b, sdk_h, sdk_t, sdk_d, sdv_b, sdv_h, sdv_t, sdv_d,
        so_b, so_h, so_t, so_d,
        num_heads, q_len, kv_len, head_dim, qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        # One program per (query block, batch * head); keys are visited in blocks of BLOCK_N.
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // num_heads
        h = pid_bh % num_heads
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < q_len
        mask_d = offs_d < head_dim

        rows = mask_m[:, None] & mask_d[None, :]
        q = _load_tile(Q + b * sq_b + h * sq_h, offs_m, offs_d, sq_t, sq_d, rows, UPCAST)
        dq = _load_tile(DQ + b * sdq_b + h * sdq_h, offs_m, offs_d, sdq_t, sdq_d, rows, UPCAST)
        k_base = K + b * sk_b + h * sk_h
        dk_base = DK + b * sdk_b + h * sdk_h
        v_base = V + b * sv_b + h * sv_h
        dv_base = DV + b * sdv_b + h * sdv_h

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of s * log2(e)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum_j p_j
        mu_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum_j p_j ds_j
        acc_o = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # sum_j p_j v_j
        acc_t = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)  # sum_j p_j (ds_j v_j + dv_j)

        for start_n in range(0, kv_len, BLOCK_N):
            cols = start_n + offs_n
            mask_n = cols < kv_len
            keys = mask_n[:, None] & mask_d[None, :]
            k = _load_tile(k_base, cols, offs_d, sk_t, sk_d, keys, UPCAST)
            dk = _load_tile(dk_base, cols, offs_d, sdk_t, sdk_d, keys, UPCAST)
            v = _load_tile(v_base, cols, offs_d, sv_t, sv_d, keys, UPCAST)
            dv = _load_tile(dv_base, cols, offs_d, sdv_t, sdv_d, keys, UPCAST)
            m_i, l_i, mu_i, acc_o, acc_t = _key_block(q, dq, k, dk, v, dv, mask_n, m_i, l_i, mu_i, acc_o, acc_t,
                                                      qk_scale, PRECISION)

        out = acc_t / l_i[:, None] - (mu_i / l_i)[:, None] * (acc_o / l_i[:, None])
        o_ptrs = OUT + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :] * so_d
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=rows)


def _launch_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages), untimed: the largest tiles that ptxas compiled for sm_90
    without spilling (or nearly) two [BLOCK_M, hd] float32 accumulators. Float32 tiles need far more
    registers and shared memory than half-precision ones."""
    if dtype == torch.float32:
        return (32, 32, 8, 2) if head_dim <= 64 else (32, 16, 8, 2)
    return (64, 64, 8, 3) if head_dim <= 64 else (64, 32, 8, 3)


def attention_tangent_triton(q, k, v, dq, dk, dv, *, block_m: int | None = None,
                             block_n: int | None = None) -> torch.Tensor:
    """``attention_tangent`` as one fused kernel: q, dq [B, H, Tq, hd], k, v, dk, dv [B, H, Tk, hd]; float32
    softmax statistics and accumulators, O(Tq + Tk) memory. Inputs of one dtype (float32, bfloat16 or
    float16), any strides; the result [B, H, Tq, hd] has that dtype. ``block_m`` / ``block_n`` override the
    tile sizes (powers of two >= 16)."""
    tensors = (q, k, v, dq, dk, dv)
    if triton is None:
        raise PMFError("tangent attention 'triton' needs the triton package (pip install triton)")
    if not triton_available(*tensors):
        raise PMFError("tangent attention 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before triton "
                       f"is imported); got tensors on {q.device}")
    if (q.dim() != 4 or dq.shape != q.shape or any(t.shape != k.shape for t in (v, dk, dv))
            or k.dim() != 4 or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]):
        raise PMFError("attention_tangent_triton: q, dq must be [B, H, Tq, hd] and k, v, dk, dv [B, H, Tk, hd], got "
                       f"{[tuple(t.shape) for t in tensors]}")
    dtype = q.dtype
    if dtype not in _DTYPES or any(t.dtype != dtype for t in tensors):
        raise PMFError(f"attention_tangent_triton: inputs must share one dtype among float32, bfloat16, float16, "
                       f"got {[t.dtype for t in tensors]}")
    B, H, T, hd = q.shape
    bm, bn, warps, stages = _launch_config(hd, dtype)
    bm, bn = block_m or bm, block_n or bn
    for name, size in (("block_m", bm), ("block_n", bn)):
        if size < 16 or size & (size - 1):
            raise PMFError(f"attention_tangent_triton: {name} must be a power of two >= 16, got {size}")
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    # The interpreter's dot multiplies the raw bits of bfloat16 tiles (stored as uint16), so it computes in
    # float32 there; on a GPU half-precision tiles feed the tensor cores directly.
    upcast = _interpreting() and dtype == torch.bfloat16
    grid = (triton.cdiv(T, bm), B * H)
    # float32 products in full precision unless torch's matmuls may use TF32 too
    precision = "ieee" if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():  # launch on q's GPU
        _tangent_kernel[grid](
            q, k, v, dq, dk, dv, out,
            *q.stride(), *k.stride(), *v.stride(), *dq.stride(), *dk.stride(), *dv.stride(), *out.stride(),
            H, T, k.shape[2], hd, hd ** -0.5,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=max(16, triton.next_power_of_2(hd)), UPCAST=upcast,
            PRECISION=precision, num_warps=warps, num_stages=stages,
        )
    return out
