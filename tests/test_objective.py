"""The pMF objective: fixture 3 parity (A, B, C), draws, JVP against finite differences, pure pieces."""

import math

import pytest
import torch

import pmf
from helpers import load_npz, rel_err
from pmf import objective as O
from pmf.nn.release import to_release_key
from pmf.objective import Draws, pmf_loss

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4


@pytest.fixture(scope="module")
def grads_ref(fixtures_dir):
    import numpy as np

    return dict(np.load(fixtures_dir / "loss_grads.npz"))


def fixture_draws(d):
    B = d["t"].shape[0]
    return Draws(t=d["t"], r=d["r"], noise=d["noise_scale"] * d["e_unit"], omega=d["omega"], t_min=d["t_min"],
                 t_max=d["t_max"], drop=torch.arange(B) < d["num_drop"])


@pytest.mark.parametrize("jvp", ["split", "fused"])
@pytest.mark.parametrize("setting", ["A", "B", "C"])
def test_fixture3_loss_intermediates_and_gradients(setting, jvp, tiny_model, fixtures_dir, grads_ref):
    d = load_npz(fixtures_dir / f"loss_{setting}.npz")
    out = pmf_loss(tiny_model, d["x"], d["labels"], fixture_draws(d), num_classes=10, jvp=jvp)
    out.loss.backward()

    t, r = d["t"].view(-1, 1, 1, 1), d["r"].view(-1, 1, 1, 1)
    V_ref = d["u"] + (t - r) * d["du_dt"]
    v_t_ref = ((1 - t) * d["x"] + t * d["noise_scale"] * d["e_unit"] - d["x"]) / t.clamp(0.05, 1)
    v_g_ref = d["v_g"] if "v_g" in d else v_t_ref  # A: omega == 1, so v_g = v_t
    assert rel_err(out.u, d["u"]) <= TOL
    assert rel_err(out.v, d["v"]) <= TOL
    assert rel_err(out.du_dt, d["du_dt"]) <= TOL
    assert rel_err(out.V, V_ref) <= TOL
    assert rel_err(out.v_g, v_g_ref) <= TOL
    if "v_c" in d:
        assert rel_err(out.v_c, d["v_c"]) <= TOL
    assert rel_err(out.per_sample_u_raw, d["loss_u_per_sample_raw"]) <= TOL
    assert rel_err(out.per_sample_v_raw, d["loss_v_per_sample_raw"]) <= TOL
    weighted = d["loss_u_per_sample_weighted"] + d["loss_v_per_sample_weighted"]
    assert rel_err(out.per_sample, weighted) <= TOL
    assert abs(out.loss_u.item() / d["loss_u_logged"].item() - 1) <= TOL
    assert abs(out.loss_v.item() / d["loss_v_logged"].item() - 1) <= TOL
    assert abs(out.loss.item() - d["loss"].item()) <= 1e-6

    grads = {to_release_key(k): p.grad for k, p in tiny_model.named_parameters()}
    keys = [str(k) for k in grads_ref["param_keys"]]
    assert set(keys) == set(grads)
    norms = torch.tensor([grads[k].double().norm().item() for k in keys])
    ref_norms = torch.from_numpy(grads_ref[f"{setting}__gradnorm"])
    assert ((norms / ref_norms - 1).abs().max()) <= TOL
    small = [k for k in keys if f"{setting}__{k}" in grads_ref]
    assert len(small) == 56
    for k in small:
        assert rel_err(grads[k], torch.from_numpy(grads_ref[f"{setting}__{k}"])) <= TOL, k


def test_fixture3_draw_transforms_reproduce_release(fixtures_dir):
    for s in "ABC":
        d = load_npz(fixtures_dir / f"loss_{s}.npz")
        cfg_max, beta = d["cfg_cfg_max"].item(), d["cfg_cfg_beta"].item()
        assert torch.allclose(O.omega_from_uniform(d["cfg_scale_uniform"], cfg_max, beta), d["omega"], rtol=1e-6)
        drop = O.first_k_dropped(d["cond_drop_uniform"], d["cfg_class_dropout_prob"].item())
        assert int(drop.sum()) == int(d["num_drop"]) and torch.equal(drop, torch.arange(8) < d["num_drop"])
        w = O.guidance_scale_in_interval(d["omega"], d["t"], d["t_min"], d["t_max"])
        assert torch.allclose(w, d["w_interval"])
        if s != "C":  # C injected (t, r)
            P_mean, P_std = d["cfg_P_mean"].item(), d["cfg_P_std"].item()
            a = torch.sigmoid(P_std * d["t_normal_raw"] + P_mean)
            b = torch.sigmoid(P_std * d["r_normal_raw"] + P_mean)
            n_fm = int(8 * d["cfg_data_proportion"].item())
            b[:n_fm] = a[:n_fm]
            assert torch.allclose(torch.maximum(a, b), d["t"], atol=1e-6)
            assert torch.allclose(torch.minimum(a, b), d["r"], atol=1e-6)
    # in B, uniforms below 0.1 sit at 2, 3 and 5, yet the first three samples are dropped
    dB = load_npz(fixtures_dir / "loss_B.npz")
    assert (dB["cond_drop_uniform"] < 0.1).nonzero().flatten().tolist() == [2, 3, 5]
    assert O.first_k_dropped(dB["cond_drop_uniform"], 0.1).tolist() == [True] * 3 + [False] * 5


def test_sample_draws_structure():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1000, 1, 2, 2)
    d = O.sample_draws(x, P_mean=0.8, P_std=0.8, data_proportion=0.5, cfg_max=7.0, cfg_beta=1.0,
                       class_dropout_prob=0.1, noise_scale=2.0, generator=g)
    assert torch.all(d.t[:500] == d.r[:500]) and torch.all(d.r[500:] < d.t[500:])
    assert torch.all(d.t_min[:500] == 0) and torch.all(d.t_max[:500] == 1)
    assert 0 <= d.t_min[500:].min() and d.t_min[500:].max() < 0.5 <= d.t_max[500:].min()
    assert d.omega.min() >= 1 and d.omega.max() <= 8
    # p(omega) ~ 1/omega on [1, 8]: P(omega < sqrt(8)) = 1/2
    assert abs((d.omega < math.sqrt(8)).float().mean().item() - 0.5) < 0.05
    k = int(d.drop.sum())
    assert 50 < k < 150 and torch.all(d.drop[:k]) and not torch.any(d.drop[k:])
    assert abs(d.noise.std().item() - 2.0) < 0.1
    # median of sigmoid(N(0.8, 0.8)) over the a-draws is sigmoid(0.8)
    assert abs(d.t[:500].median().item() - torch.sigmoid(torch.tensor(0.8)).item()) < 0.03


def test_per_sample_label_dropout_reaches_the_r_below_t_rows_with_the_same_rate():
    x = torch.zeros(1000, 1, 2, 2)
    kw = dict(P_mean=0.8, P_std=0.8, data_proportion=0.5, cfg_max=7.0, cfg_beta=1.0, class_dropout_prob=0.1,
              noise_scale=1.0)
    first = O.sample_draws(x, generator=torch.Generator().manual_seed(0), **kw)
    per = O.sample_draws(x, generator=torch.Generator().manual_seed(0), class_dropout="per-sample", **kw)
    assert torch.equal(per.t, first.t) and torch.equal(per.noise, first.noise)  # the same draws otherwise
    assert int(per.drop.sum()) == int(first.drop.sum())  # the same count, other rows
    assert not torch.any(first.drop & (first.r < first.t)) and torch.any(per.drop & (per.r < per.t))


def test_omega_inverse_cdf_beta2():
    u = torch.linspace(0, 1, 5)
    om = O.omega_from_uniform(u, 7.0, 2.0)
    # CDF of omega^-2 on [1, 8]: (1 - 1/omega) / (1 - 1/8)
    assert torch.allclose((1 - 1 / om) / (1 - 1 / 8), u, atol=1e-6)


def test_tr_uniform_mixes_in_uniform_times():
    g = torch.Generator().manual_seed(1)
    t, r = O.sample_times(20000, P_mean=0.0, P_std=0.8, data_proportion=0.0, tr_uniform=True, generator=g)
    # logit-normal(0, 0.8) almost never exceeds 0.97; uniform draws put ~10% * (1 - 0.97^2) above it
    frac = (t > 0.97).float().mean().item()
    assert 0.002 < frac < 0.02


def test_pure_pieces():
    v_t, v_c, v_u = torch.ones(2, 1, 1, 1), 3 * torch.ones(2, 1, 1, 1), torch.ones(2, 1, 1, 1)
    w = torch.tensor([2.0, 4.0])
    g = O.guided_target(v_t, v_c, v_u, w, torch.tensor([False, True]))
    assert g.flatten().tolist() == [1 + 0.5 * 2, 1.0]
    L = torch.tensor([0.0, 1.0, 100.0], requires_grad=True)
    wL = O.adaptive_weight(L, 1.0, 0.01)
    assert torch.allclose(wL, L.detach() / (L.detach() + 0.01))
    wL.sum().backward()
    assert torch.allclose(L.grad, 1 / (L.detach() + 0.01))  # the denominator is stop-gradient
    z, out, t = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.tensor([0.01])
    assert O.to_velocity(z, out, t).item() == pytest.approx(20.0)  # clip at 0.05
    assert O.to_velocity(z, out, t, "u").item() == 0.0


def _float64_tiny():
    torch.manual_seed(0)
    m = pmf.build_model("pMF-Tiny/4", input_size=8, patch_size=4, hidden_size=16, num_heads=2, depth=3,
                        aux_head_depth=1).double()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m


def test_jvp_matches_central_finite_differences_float64():
    m = _float64_tiny()
    B = 3
    z = torch.randn(B, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.3], dtype=torch.float64)
    r = torch.tensor([0.2, 0.5, 0.1], dtype=torch.float64)
    om, tmin, tmax = torch.full((B,), 2.0, dtype=torch.float64), torch.zeros(B, dtype=torch.float64), \
        torch.ones(B, dtype=torch.float64)
    y = torch.tensor([1, 2, 10])
    tz = torch.randn_like(z)
    u, du = O.u_total_derivative(m, z, t, r, om, tmin, tmax, y, tz)

    def u_at(eps):
        x_u = m(z + eps * tz, (t + eps) - r, om, tmin, tmax, y, heads="u").x_u
        return O.to_velocity(z + eps * tz, x_u, t + eps)

    eps = 1e-6
    fd = (u_at(eps) - u_at(-eps)) / (2 * eps)
    assert rel_err(du, fd) < 1e-7
    assert rel_err(u, u_at(0.0)) < 1e-12


def test_split_and_fused_gradients_agree_float64():
    m = _float64_tiny()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.tensor([0, 1, 2, 3])
    d = O.sample_draws(x, P_mean=0.0, P_std=1.0, data_proportion=0.25, cfg_max=7.0, cfg_beta=1.0,
                       class_dropout_prob=0.3, noise_scale=1.0, generator=g)
    d.t, d.r, d.omega, d.t_min, d.t_max = (v.double() for v in (d.t, d.r, d.omega, d.t_min, d.t_max))
    grads = []
    for mode in ("split", "fused"):
        m.zero_grad()
        pmf_loss(m, x, y, d, num_classes=10, jvp=mode).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert rel_err(grads[0], grads[1]) < 1e-10


def test_u_prediction_variant_and_no_v_head():
    torch.manual_seed(0)
    m = pmf.build_model("pMF-Tiny/4", input_size=8, hidden_size=16, num_heads=2, depth=3, aux_head_depth=1,
                        v_head=False)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    d = Draws(t=torch.tensor([0.7, 0.4]), r=torch.tensor([0.2, 0.4]), noise=torch.randn(2, 3, 8, 8),
              omega=torch.ones(2), t_min=torch.zeros(2), t_max=torch.ones(2), drop=torch.zeros(2, dtype=torch.bool))
    out_u = pmf_loss(m, x, torch.tensor([1, 2]), d, num_classes=10, prediction="u")
    x_u = m(out_u.z, d.t - d.r, d.omega, d.t_min, d.t_max, torch.tensor([1, 2])).x_u
    assert torch.allclose(out_u.u, x_u)  # the output is read as u directly
    assert out_u.v is None and out_u.loss_v is None
    # without guidance and without a v-head, the tangent is the u-head at h = 0 (= v)
    x_v0 = m(out_u.z, 0.0, 1.0, 0.0, 1.0, torch.tensor([1, 2])).x_u
    assert torch.allclose(out_u.v_c, x_v0)
    out_u.loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    with pytest.raises(pmf.PMFError, match="prediction must be 'x' or 'u'"):
        pmf_loss(m, x, torch.tensor([1, 2]), d, num_classes=10, prediction="eps")


@pytest.mark.parametrize("v_head", [True, False])
def test_loss_terms_are_a_typed_result(v_head):
    """Fields by name (no dict access): the v-head terms are None without a v-head, the perceptual term's logs
    sit in ``logs``; v_t is the clean image's velocity."""
    from pmf.nn.model import build_model

    torch.manual_seed(0)
    m = build_model("pMF-Tiny/4", input_size=8, depth=2, aux_head_depth=1, v_head=v_head).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    d = O.sample_draws(x, P_mean=0.8, P_std=0.8, data_proportion=0.5, cfg_max=7.0, cfg_beta=1.0,
                       class_dropout_prob=0.1, noise_scale=1.0, generator=torch.Generator().manual_seed(1))
    d = Draws(**{k: getattr(d, k).double() if getattr(d, k).is_floating_point() else getattr(d, k)
                 for k in ("t", "r", "noise", "omega", "t_min", "t_max", "drop")})

    def perceptual(x_pred, x, t):
        return 0.1 * (x_pred - x).pow(2).flatten(1).mean(1), {"loss_fake": torch.tensor(2.0)}

    out = pmf_loss(m, x, y, d, num_classes=10, perceptual=perceptual)
    assert (out.loss_v is None, out.per_sample_v_raw is None, out.v is None) == (not v_head,) * 3
    assert set(out.logs) == {"loss_fake"} and out.logs["loss_fake"].item() == 2.0
    with pytest.raises(TypeError):
        out["loss"]  # noqa: B018  (the dict shim is gone)
    t = d.t.view(-1, 1, 1, 1)
    assert torch.allclose(out.v_t, (out.z - x) / t.clamp(0.05, 1), rtol=0, atol=1e-12)
    assert torch.allclose(out.loss, out.per_sample.mean())
