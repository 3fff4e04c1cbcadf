"""Fast paths against exact references: the release-port re-creation, the inline tangent (du/dt propagated
next to the primal), the reduced guidance pass, and the bf16 inference path."""

import sys
from pathlib import Path

import pytest
import torch

import pmf
from helpers import load_npz, rel_err
from pmf import objective as O
from pmf.objective import Draws, pmf_loss
from pmf.sampling import sample

# the release-port re-creation is a reference for the benchmarks, not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from release_port import ReleasePortNet, release_generate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def io(fixtures_dir):
    return load_npz(fixtures_dir / "net_tiny_io.npz")


def test_release_port_recreation_reproduces_fixture1(tiny_release_sd, io):
    net = ReleasePortNet(pmf.model_config("pMF-Tiny/4")).load_release(tiny_release_sd).eval()
    with torch.no_grad():
        u, v = net(io["x"], io["t"], io["h"], io["omega"], io["t_min"], io["t_max"], io["y"])
    clip = io["t"].clamp(0.05, 1).view(-1, 1, 1, 1)  # compare in image space (scale-free, see the README)
    assert ((u - io["u"]) * clip).abs().max() <= 1e-5
    assert ((v - io["v"]) * clip).abs().max() <= 1e-5


@pytest.mark.parametrize("steps, omega", [(1, 3.0), (2, 1.0)])
def test_release_port_recreation_matches_our_sampler_and_fixture2(tiny_release_sd, tiny_model, fixtures_dir, steps,
                                                                   omega):
    d = load_npz(fixtures_dir / "generate_tiny.npz")
    net = ReleasePortNet(pmf.model_config("pMF-Tiny/4"), eval_mode=True).load_release(tiny_release_sd).eval()
    assert not hasattr(net, "v_heads")
    noise = d["noise_scale"].item() * d["eps"]
    ref = release_generate(net, noise, d["labels"], steps=steps, omega=omega, t_min=0.1, t_max=0.7)
    ours = sample(tiny_model.eval(), noise, d["labels"], steps=steps, omega=omega, t_min=0.1, t_max=0.7)
    assert (ref - d[f"steps{steps}_omega{int(omega)}"]).abs().max() <= 1e-5
    assert (ours - ref).abs().max() <= 1e-5


def _float64_tiny(v_head=True):
    torch.manual_seed(0)
    m = pmf.build_model("pMF-Tiny/4", input_size=8, patch_size=4, hidden_size=16, num_heads=2, depth=3,
                        aux_head_depth=1, v_head=v_head).double()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m


@pytest.mark.parametrize("prediction", ["x", "u"])
def test_inline_tangent_equals_forward_mode_ad_float64(prediction):
    m = _float64_tiny()
    B = 4
    z = torch.randn(B, 3, 8, 8, dtype=torch.float64)
    # 0.03: below the clip, zero clip derivative. Exactly at a clip bound (t = 0.05 or 1) the derivative is a
    # convention that differs between torch releases (and JAX takes 1/2), and training never draws it.
    t = torch.tensor([0.9, 0.5, 0.03, 0.97], dtype=torch.float64)
    r = torch.tensor([0.2, 0.5, 0.0, 0.4], dtype=torch.float64)
    om = torch.tensor([2.0, 1.0, 7.5, 3.0], dtype=torch.float64)
    tmin, tmax = torch.full((B,), 0.1, dtype=torch.float64), torch.full((B,), 0.8, dtype=torch.float64)
    y = torch.tensor([1, 2, 10, 0])
    tz = torch.randn_like(z)
    u_ref, du_ref = O.u_total_derivative(m, z, t, r, om, tmin, tmax, y, tz, prediction=prediction)
    x_u, x_v, dx_u = m(z, t - r, om, tmin, tmax, y, tangents=(tz, torch.ones_like(t)))
    x_u_plain, x_v_plain, _ = m(z, t - r, om, tmin, tmax, y)
    assert not dx_u.requires_grad and x_u.requires_grad
    assert torch.allclose(x_u, x_u_plain, rtol=0, atol=1e-13) and torch.allclose(x_v, x_v_plain, rtol=0, atol=1e-13)
    du = O.velocity_tangent(z, x_u.detach(), t, tz, dx_u, prediction)
    assert rel_err(du, du_ref) < 1e-12
    assert rel_err(O.to_velocity(z, x_u, t, prediction), u_ref) < 1e-12


def test_all_jvp_forms_give_the_same_loss_and_gradients_float64():
    m = _float64_tiny()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    d = O.sample_draws(x, P_mean=0.0, P_std=1.0, data_proportion=0.34, cfg_max=7.0, cfg_beta=1.0,
                       class_dropout_prob=0.3, noise_scale=1.0, generator=g)
    d.t, d.r, d.omega, d.t_min, d.t_max = (v.double() for v in (d.t, d.r, d.omega, d.t_min, d.t_max))
    outs, grads = {}, {}
    for mode in O.JVP_MODES:
        m.zero_grad()
        outs[mode] = pmf_loss(m, x, y, d, num_classes=10, jvp=mode)
        outs[mode].loss.backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in m.parameters()])
    for mode in O.JVP_MODES:
        assert rel_err(grads[mode], grads["split"]) < 1e-10, mode
        for key in ("du_dt", "V", "v", "v_g"):
            assert rel_err(getattr(outs[mode], key), getattr(outs["split"], key)) < 1e-10, (mode, key)


def test_inline_tangent_reproduces_fixture3_and_its_gradients(tiny_model, fixtures_dir):
    # fixture 3, setting C: the 0.05 clip, dropped samples with r < t, samples outside their interval
    d = load_npz(fixtures_dir / "loss_C.npz")
    draws = Draws(t=d["t"], r=d["r"], noise=d["noise_scale"] * d["e_unit"], omega=d["omega"], t_min=d["t_min"],
                  t_max=d["t_max"], drop=torch.arange(8) < d["num_drop"])
    out = pmf_loss(tiny_model, d["x"], d["labels"], draws, num_classes=10, jvp="inline")
    for key in ("u", "v", "du_dt", "v_g", "v_c"):
        assert rel_err(getattr(out, key), d[key]) <= 1e-4, key
    out.loss.backward()
    ref = [p.grad.clone() for p in tiny_model.parameters()]
    tiny_model.zero_grad()
    pmf_loss(tiny_model, d["x"], d["labels"], draws, num_classes=10, jvp="split").loss.backward()
    for a, b in zip(ref, (p.grad for p in tiny_model.parameters())):
        assert rel_err(a, b) <= 1e-4


def test_guidance_pass_skips_only_rows_without_effect(tiny_model):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 32, 32, generator=g)
    t = torch.tensor([0.5, 0.5, 0.5, 0.5])
    y = torch.tensor([1, 2, 3, 4])
    w = torch.tensor([3.0, 1.0, 2.0, 5.0])
    drop = torch.tensor([False, False, True, False])
    calls = []
    hook = tiny_model.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        v_c, v_u = O.guidance_velocities(tiny_model, z, t, y, w, num_classes=10, drop=drop)
        full_c, full_u = O.guidance_velocities(tiny_model, z, t, y, w, num_classes=10)
    finally:
        hook.remove()
    assert calls == [4 + 2, 4 + 3]  # w = 1 (row 1) and the dropped row 2 need no unconditional pass
    assert torch.allclose(v_c, full_c, atol=1e-5)
    assert torch.allclose(v_u[[0, 3]], full_u[[0, 3]], atol=1e-5) and torch.equal(v_u[[1, 2]], v_c[[1, 2]])
    v_t = torch.randn_like(z)
    ref = O.guided_target(v_t, full_c, full_u, w, drop)
    assert torch.allclose(O.guided_target(v_t, v_c, v_u, w, drop), ref, atol=1e-5)


def test_bf16_autocast_inference_stays_close(tiny_model):
    noise = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 7, 9])
    ref = sample(tiny_model.eval(), noise, labels, omega=3.0, t_min=0.1, t_max=0.7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = sample(tiny_model, noise, labels, omega=3.0, t_min=0.1, t_max=0.7)
    assert fast.dtype == torch.float32 or fast.dtype == torch.bfloat16
    err = (fast.float() - ref).abs().max().item()
    assert 0 < err <= 5e-2  # bf16 matmuls: visibly different bits, well within a uint8 level or two


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_block_tail_computes_the_last_rows_exactly(backend):
    # a head's last block computes only the patch rows: equal to those rows of the full block, primal and tangent
    torch.manual_seed(0)
    m = pmf.build_model("pMF-Tiny/4").double()
    block = m.u_heads[-1]
    with torch.no_grad():
        block.attn_scale.normal_(0, 0.5)
        block.mlp_scale.normal_(0, 0.5)
    n = m.config.num_patches
    x = torch.randn(3, m.config.num_prefix_tokens + n, m.config.hidden_size, dtype=torch.float64)
    dx = torch.randn_like(x)
    with pmf.nn.attention.attention_backend(backend):
        full, tail = block(x), block(x, tail=n)
        (y_full, dy_full), (y_tail, dy_tail) = block.jvp(x, dx), block.jvp(x, dx, tail=n)
    assert tail.shape == (3, n, m.config.hidden_size)
    assert (tail - full[:, -n:]).abs().max() <= 1e-12
    assert (y_tail - y_full[:, -n:]).abs().max() <= 1e-12 and (dy_tail - dy_full[:, -n:]).abs().max() <= 1e-12
    with pytest.raises(ValueError, match="tail"):
        block(x, tail=n + 1)  # the rotated (patch) tokens only
