"""Muon (Newton-Schulz orthogonalisation, the release's parameter split), its Adam side, schedules."""

import io
import math

import numpy as np
import pytest
import torch

from helpers import fixture_gradients
from pmf import build_model, load_release_state_dict
from pmf.errors import PMFError
from pmf.model_configs import model_config
from pmf.nn.model import PMFDiT
from pmf.nn.release import from_release_key, to_release_key
from pmf.training.config import OptimConfig
from pmf.training.optim import (
    Muon,
    build_optimizer,
    lr_factor,
    newton_schulz,
    newton_schulz_batched,
    set_lr,
    split_parameters,
)


@pytest.mark.parametrize("shape", [(16, 16), (8, 24), (40, 12)])
def test_newton_schulz_flattens_the_spectrum_and_keeps_singular_vectors(shape):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    X = newton_schulz(G, steps=5, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    s = torch.linalg.svdvals(X)
    assert X.shape == G.shape and s.min() > 0.5 and s.max() < 1.3  # the quintic's band around 1
    # Same singular vectors: U^T X V is diagonal.
    core = U.T @ X @ Vh.T
    assert (core - torch.diag(torch.diagonal(core))).abs().max() < 1e-6
    torch.testing.assert_close(newton_schulz(3.0 * G, dtype=torch.float64), X)  # scale invariant


def test_split_follows_the_release_rule_2d_in_the_flax_layout_to_muon(fixtures_dir):
    model = PMFDiT(model_config("pMF-Tiny/4"))
    muon, adam = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names, adam_names = {names[id(p)] for p in muon}, {names[id(p)] for p in adam}
    assert "shared_blocks.0.attn.q_proj.weight" in muon_names and "u_final_layer.linear.weight" in muon_names
    assert "y_embedder.embedding_table.weight" in adam_names  # [1, N, D] in the release: Adam
    for n in ("x_embedder.proj1.weight", "class_tokens", "pos_embed", "shared_blocks.0.attn_scale",
              "shared_blocks.0.norm1.weight", "u_final_layer.linear.bias"):
        assert n in adam_names, n
    assert len(muon) + len(adam) == len(list(model.parameters()))
    # Every tensor's label equals the one optax's default rule gave it in the release's layout.
    labels = dict(s.split("=") for s in np.load(fixtures_dir / "optim_traj_tiny.npz")["meta/labels"])
    ours = {to_release_key(n): "muon" if n in muon_names else "adam" for n in names.values()}
    assert ours == labels


@pytest.mark.parametrize("foreach", [True, False], ids=["batched", "per-parameter"])
def test_release_optimiser_follows_the_optax_trajectory(fixtures_dir, tiny_release_sd, foreach):
    """optax.contrib.muon(lr=1e-2, adam_b2=0.95) on the fixture weights: parameters after steps 1 and 4
    within 1e-4 relative per tensor (norm of the difference over the norm of the update)."""
    ref = np.load(fixtures_dir / "optim_traj_tiny.npz")
    model = load_release_state_dict(build_model("pMF-Tiny/4"), tiny_release_sd)
    keys = [k for k in tiny_release_sd if k != "rope_freqs"]
    params = dict(model.named_parameters())
    start = {k: params[from_release_key(k)].detach().clone() for k in keys}
    grads = fixture_gradients(model, keys, int(ref["meta/steps"]))
    for k in keys:  # the same random numbers as the fixture
        assert grads[0][k].double().sum().item() == pytest.approx(float(ref[f"gradsum1/{k}"]), rel=1e-5, abs=1e-6)
    opt = build_optimizer(model, OptimConfig(name="muon", lr=float(ref["meta/lr"]), foreach=foreach))
    worst = 0.0
    for step, step_grads in enumerate(grads, start=1):
        for k in keys:
            params[from_release_key(k)].grad = step_grads[k]
        opt.step()
        if step in (1, 4):
            for k in keys:
                p, want = params[from_release_key(k)].detach().double(), torch.from_numpy(ref[f"param{step}/{k}"])
                err = ((p - want.double()).norm() / (want.double() - start[k].double()).norm()).item()
                worst = max(worst, err)
                assert err < 1e-4, (step, k, err)
    assert worst < 1e-4


def test_optimiser_state_of_the_earlier_muon_is_refused():
    model = PMFDiT(model_config("pMF-Tiny/4"))
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-2))
    state = opt.state_dict()
    for g in state["param_groups"]:
        del g["rule"]  # what the earlier Muon saved
    with pytest.raises(PMFError, match="earlier version"):
        opt.load_state_dict(state)
    opt.load_state_dict(build_optimizer(model, OptimConfig(name="muon", lr=1e-2)).state_dict())  # current: fine


def test_muon_step_is_a_scaled_orthogonal_matrix_and_adam_side_is_nadam():
    torch.manual_seed(0)
    w, b = torch.nn.Parameter(torch.randn(24, 8)), torch.nn.Parameter(torch.randn(8, dtype=torch.float64))
    opt = Muon([dict(params=[w], kind="muon"), dict(params=[b], kind="adam")], lr=0.1, betas=(0.9, 0.95))
    b_ref, m, v = b.detach().clone(), torch.zeros(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    for t in range(1, 5):
        g, gb = torch.randn(24, 8), torch.randn(8, dtype=torch.float64)
        w0 = w.detach().clone()
        w.grad, b.grad = g, gb.clone()
        opt.step()
        update = (w0 - w.detach()) / (0.1 * math.sqrt(24 / 8))  # shape scaling sqrt(max(1, out/in))
        s = torch.linalg.svdvals(update)
        assert s.min() > 0.5 and s.max() < 1.3
        # NAdam as optax's adamw(nesterov=True): the Nesterov mix of m and g, each bias-corrected
        m, v = 0.9 * m + 0.1 * gb, 0.95 * v + 0.05 * gb**2
        m_hat = 0.9 * m / (1 - 0.9 ** (t + 1)) + 0.1 * gb / (1 - 0.9**t)
        b_ref -= 0.1 * m_hat / ((v / (1 - 0.95**t)).sqrt() + 1e-8)
        torch.testing.assert_close(b.detach(), b_ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="2-D"):
        Muon([dict(params=[b], kind="muon")])


def test_build_optimizer_and_schedules():
    model = PMFDiT(model_config("pMF-Tiny/4"))
    assert isinstance(build_optimizer(model, OptimConfig(name="adamw", lr=1e-3)), torch.optim.AdamW)
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-2, adam_lr=1e-3))
    assert [g["kind"] for g in opt.param_groups] == ["muon", "adam"]
    assert opt.foreach and not build_optimizer(model, OptimConfig(foreach=False)).foreach
    with pytest.raises(ValueError, match="optim.foreach"):
        OptimConfig(foreach="no")
    assert set_lr(opt, 0.5) == 5e-3 and opt.param_groups[1]["lr"] == 5e-4
    const, warm = OptimConfig(), OptimConfig(schedule="warmup", warmup_steps=10)
    cos = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, const, 100) == lr_factor(99, const, 100) == 1.0
    assert lr_factor(0, warm, 100) == 0.1 and lr_factor(9, warm, 100) == 1.0 and lr_factor(50, warm, 100) == 1.0
    assert lr_factor(10, cos, 100) == pytest.approx(1.0) and lr_factor(100, cos, 100) == pytest.approx(0.1)
    assert lr_factor(55, cos, 100) == pytest.approx(0.55)


@pytest.mark.parametrize("shape", [(12, 12), (20, 8), (8, 20)])
def test_batched_newton_schulz_equals_the_per_matrix_one(shape):
    G = torch.randn((3, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    G[1] *= 100.0  # per-matrix normalisation: one large matrix does not rescale the others
    X = newton_schulz_batched(G, dtype=torch.float64)
    assert X.shape == G.shape
    for Gi, Xi in zip(G, X):
        torch.testing.assert_close(Xi, newton_schulz(Gi, dtype=torch.float64), rtol=0, atol=1e-12)


# Muon matrices: same shapes (batched), tall, wide, a lone shape; Adam: 1-D, 3-D, 4-D.
MUON_SHAPES = [(12, 12), (12, 12), (12, 12), (20, 8), (20, 8), (8, 20), (8, 20), (5, 7)]
ADAM_SHAPES = [(7,), (7,), (1, 4, 6), (3, 1, 2, 2)]


def _params():
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in MUON_SHAPES + ADAM_SHAPES]


def _optimizer(params, foreach, weight_decay, max_stack=32):
    n = len(MUON_SHAPES)
    return Muon([dict(params=params[:n], kind="muon", lr=0.05), dict(params=params[n:], kind="adam", lr=0.01)],
                weight_decay=weight_decay, ns_dtype=torch.float64, foreach=foreach, max_stack=max_stack)


def _run(params, opt, steps: range):
    """Steps with gradients that depend only on the step number; params 0 and 8 have none on some steps."""
    for step in steps:
        g = torch.Generator().manual_seed(100 + step)
        for i, p in enumerate(params):
            p.grad = None if i in (0, 8) and step % 3 == 1 else torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()


def _assert_same(params_a, params_b, opt_a=None, opt_b=None):
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    if opt_a is not None:
        for a, b in zip(params_a, params_b):
            sa, sb = opt_a.state[a], opt_b.state[b]
            assert sa.keys() == sb.keys()
            for k in sa:
                torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("weight_decay, max_stack", [(0.0, 32), (0.1, 32), (0.1, 2)])
def test_foreach_step_equals_the_per_parameter_step(weight_decay, max_stack):
    # max_stack=2 splits the three 12 x 12 matrices into two batched calls
    pa, pb = _params(), _params()
    opt_a, opt_b = _optimizer(pa, False, weight_decay), _optimizer(pb, True, weight_decay, max_stack)
    _run(pa, opt_a, range(6))
    _run(pb, opt_b, range(6))
    assert (pa[0] - _params()[0]).abs().max() > 1e-3  # the steps did move the weights
    assert float(opt_a.state[pa[8]]["step"]) == 4 and float(opt_a.state[pa[9]]["step"]) == 6
    _assert_same(pa, pb, opt_a, opt_b)


def test_a_parameter_without_gradient_is_left_alone():
    params = _params()
    opt = _optimizer(params, True, 0.1)
    before = params[0].detach().clone()
    _run(params, opt, [1])  # step 1: params 0 and 8 have no gradient
    assert torch.equal(params[0], before) and params[0] not in opt.state and params[8] not in opt.state


@pytest.mark.parametrize("writer,reader", [(False, True), (True, False)])
def test_a_checkpoint_of_one_step_implementation_resumes_in_the_other(writer, reader):
    full = _params()
    _run(full, _optimizer(full, writer, 0.1), range(7))

    first = _params()
    opt = _optimizer(first, writer, 0.1)
    _run(first, opt, range(4))
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt_r = _optimizer(resumed, reader, 0.1)
    opt_r.load_state_dict(ckpt["optimizer"])
    assert opt_r.foreach is reader  # the implementation is not part of the state
    _run(resumed, opt_r, range(4, 7))
    _assert_same(full, resumed)


def test_foreach_step_in_float32_with_float32_newton_schulz_stays_close():
    pa, pb = [[torch.nn.Parameter(p.detach().float()) for p in _params()] for _ in range(2)]
    opt_a, opt_b = _optimizer(pa, False, 0.1), _optimizer(pb, True, 0.1)
    opt_a.ns_dtype = opt_b.ns_dtype = torch.float32
    for params, opt in ((pa, opt_a), (pb, opt_b)):
        for step in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            opt.step()
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
