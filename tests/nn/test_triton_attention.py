"""The fused Triton attention tangent against the exact ``attention_tangent``.

On a CPU the kernel runs in Triton's interpreter, which must be switched on (TRITON_INTERPRET=1) before the
kernel is defined; the checks therefore run once in a child process (this file run as a script) that reports
its errors as JSON, and the tests assert on them. Small tiles (16) keep the interpreter fast and make every
sequence length below span several tiles, with a ragged last one."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pmf.errors import PMFError
from pmf.nn.attention import current_tangent_attention, tangent_attention

pytest.importorskip("triton")

# (B, H, T, hd, dtype, tolerance on max |triton - math| / max |math|); T = 84, 36, 276 are not multiples of 16
CASES = {
    "fp32_T84_hd16": (2, 3, 84, 16, "float32", 1e-5),
    "fp32_T36_hd32": (1, 2, 36, 32, "float32", 1e-5),
    "fp32_T276_hd64": (1, 1, 276, 64, "float32", 1e-5),
    "fp32_T20_hd128": (1, 2, 20, 128, "float32", 1e-5),
    "bf16_T36_hd16": (2, 2, 36, 16, "bfloat16", 3e-2),
    "bf16_T84_hd64": (1, 2, 84, 64, "bfloat16", 3e-2),
    "fp16_T36_hd32": (1, 2, 36, 32, "float16", 5e-3),
}


def _kernel_errors() -> dict:
    """Run in the child: relative errors of each case, the same with strided (transposed-view) inputs, and
    a whole forward_with_tangent with the selector on "triton" against "math"."""
    import pmf
    from pmf.nn import attention

    result = {"imports_triton_lazily": "pmf.nn.triton_attention" not in sys.modules}
    from pmf.nn import triton_attention
    from pmf.nn.triton_attention import attention_tangent_triton, triton_available

    def rel(a, ref):
        return ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()

    g = torch.Generator().manual_seed(0)
    for name, (B, H, T, hd, dtype, _) in CASES.items():
        ts = [torch.randn(B, H, T, hd, generator=g).to(getattr(torch, dtype)) for _ in range(6)]
        out = attention_tangent_triton(*ts, block_m=16, block_n=16)
        result[name] = {"err": rel(out, attention.attention_tangent(*ts)), "dtype": str(out.dtype).split(".")[-1]}
    result["available_on_cpu"] = triton_available(torch.zeros(1))

    # v, dv laid out as Attention.jvp hands them over: [B, T, H, hd] memory viewed as [B, H, T, hd]
    ts = [torch.randn(2, 3, 84, 16, generator=g) for _ in range(4)]
    ts += [torch.randn(2, 84, 3, 16, generator=g).transpose(1, 2) for _ in range(2)]
    q, dq, k, dk, v, dv = ts
    out = attention_tangent_triton(q, k, v, dq, dk, dv, block_m=16, block_n=32)
    result["strided"] = rel(out, attention.attention_tangent(q, k, v, dq, dk, dv))

    # queries over the last 64 of 84 tokens only (a head's last block computes the patch rows alone)
    q, dq = (torch.randn(2, 3, 64, 16, generator=g) for _ in range(2))
    k, v, dk, dv = (torch.randn(2, 3, 84, 16, generator=g) for _ in range(4))
    out = attention_tangent_triton(q, k, v, dq, dk, dv, block_m=16, block_n=32)
    result["tail"] = {"shape": list(out.shape), "err": rel(out, attention.attention_tangent(q, k, v, dq, dk, dv))}

    torch.manual_seed(0)
    model = pmf.build_model("pMF-Tiny/4")  # T = 82 tokens, head dim 16: default 64 x 64 tiles, ragged
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attn_scale", "mlp_scale")) or "final_layer.linear" in name:
                p.normal_(0, 0.1)
    B = 2
    z = torch.randn(B, 3, 32, 32, generator=g)
    args = (z, torch.tensor([0.6, 0.3]), torch.tensor([2.0, 1.0]), torch.full((B,), 0.1), torch.full((B,), 0.8),
            torch.tensor([1, 7]))
    dz, dh = torch.randn(B, 3, 32, 32, generator=g), torch.ones(B)
    calls = []

    def counted(*tensors):
        calls.append(tensors[0].shape)
        return attention_tangent_triton(*tensors)

    triton_attention.attention_tangent_triton = counted  # Attention.jvp looks the kernel up when selected
    with torch.no_grad():
        x_m, _, dx_m = model.forward_with_tangent(*args, dz, dh, heads="u")
        assert not calls
        with tangent_attention("triton"):
            x_t, _, dx_t = model.forward_with_tangent(*args, dz, dh, heads="u")
    result["model"] = {"tangent": rel(dx_t, dx_m), "primal": (x_t - x_m).abs().max().item(),
                       "tangent_scale": dx_m.abs().max().item(), "kernel_calls": len(calls),
                       "attention_blocks": len(model.shared_blocks) + len(model.u_heads)}
    return result


@pytest.fixture(scope="module")
def child():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_attention_tangent(child, case):
    tol, dtype = CASES[case][-1], CASES[case][-2]
    assert child[case]["dtype"] == dtype  # the result keeps the inputs' dtype, as attention_tangent's
    assert child[case]["err"] <= tol, child[case]


def test_kernel_reads_strided_inputs(child):
    assert child["strided"] <= 1e-5


def test_kernel_takes_fewer_queries_than_keys(child):
    assert child["tail"]["shape"] == [2, 3, 64, 16]
    assert child["tail"]["err"] <= 1e-5


def test_model_tangent_with_triton_selector_equals_math(child):
    m = child["model"]
    assert m["kernel_calls"] == m["attention_blocks"]  # every block's tangent went through the kernel
    assert m["tangent_scale"] > 1e-3  # non-zero gates: attention's tangent reaches the output
    assert m["primal"] == 0.0  # the selector changes only the tangent
    assert m["tangent"] <= 1e-5, m


def test_triton_is_imported_only_when_selected(child):
    assert child["imports_triton_lazily"] and child["available_on_cpu"]


def test_selector_default_and_validation():
    assert current_tangent_attention() == "math"
    with tangent_attention("triton"):
        assert current_tangent_attention() == "triton"
    assert current_tangent_attention() == "math"
    with pytest.raises(ValueError, match="tangent attention"):
        with tangent_attention("flash"):
            pass


def test_unavailable_kernel_raises_pmf_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from pmf.nn.triton_attention import attention_tangent_triton, triton_available

    x = torch.zeros(1, 1, 4, 16)
    assert not triton_available(x)
    with pytest.raises(PMFError, match="CUDA"):
        attention_tangent_triton(x, x, x, x, x, x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_compiles_for_hopper_without_a_gpu(dtype, tmp_path, monkeypatch):
    """Lowering to sm_90 machine code (ptxas included) catches what the interpreter lets through: dtype rules
    of tl.dot, layouts, shared memory beyond the device's."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        pytest.skip(f"this triton has no offline compile API: {e}")
    from pmf.nn.triton_attention import _launch_config, _tangent_kernel

    if not hasattr(_tangent_kernel, "arg_names"):
        pytest.skip("the kernel was defined under the interpreter")
    names = _tangent_kernel.arg_names
    ptr = "*bf16" if dtype == torch.bfloat16 else "*fp32"
    signature = {n: ptr if n in ("Q", "K", "V", "DQ", "DK", "DV", "OUT") else "fp32" if n == "qk_scale"
                 else "constexpr" if n.isupper() else "i32" for n in names}
    bm, bn, warps, stages = _launch_config(64, dtype)  # pMF-B/16's head dim
    constants = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": 64, "UPCAST": False,
                 "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}
    source = ASTSource(_tangent_kernel, signature, {(names.index(k),): v for k, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "num_stages": stages})
    assert compiled.asm["cubin"]
    assert compiled.metadata.shared <= 227 * 1024  # an H100 block's shared memory


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_kernel_on_cuda_at_b16_shape(dtype, tol, monkeypatch):
    from pmf.nn.attention import attention_tangent
    from pmf.nn.triton_attention import attention_tangent_triton

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    g = torch.Generator(device="cuda").manual_seed(0)
    ts = [torch.randn(4, 12, 276, 64, generator=g, device="cuda").to(dtype) for _ in range(6)]  # pMF-B/16
    out, ref = attention_tangent_triton(*ts), attention_tangent(*ts)
    assert out.dtype == dtype
    assert ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item() <= tol


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(_kernel_errors()))


def test_training_config_takes_the_triton_tangent_for_the_inline_form_only(tmp_path, monkeypatch):
    from helpers import tiny_config
    from pmf.training.config import LossConfig
    from pmf.training.loop import train

    assert LossConfig(tangent_attention="triton").tangent_attention == "triton"
    with pytest.raises(PMFError, match="loss.jvp"):
        LossConfig(tangent_attention="triton", jvp="split")
    with pytest.raises(PMFError, match="loss.tangent_attention"):
        LossConfig(tangent_attention="flash")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = tiny_config(tmp_path / "run", loss=LossConfig(tangent_attention="triton"))
    with pytest.raises(PMFError, match="CUDA device"):  # refused before any step on a CPU
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
