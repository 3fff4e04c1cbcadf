"""Muon (Newton-Schulz orthogonalisation, the release's parameter split), its Adam side, schedules."""

import math

import pytest
import torch

from pmf.config import model_config
from pmf.nn.model import PMFDiT
from pmf.optim import Muon, build_optimizer, lr_factor, newton_schulz, set_lr, split_parameters
from pmf.train_config import OptimConfig


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


def test_split_follows_the_release_rule_every_2d_array_to_muon():
    model = PMFDiT(model_config("pMF-Tiny/4"))
    muon, adam = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names, adam_names = {names[id(p)] for p in muon}, {names[id(p)] for p in adam}
    assert "shared_blocks.0.attn.q_proj.weight" in muon_names and "u_final_layer.linear.weight" in muon_names
    assert "y_embedder.embedding_table.weight" in muon_names  # a 2-D array in the release too
    for n in ("x_embedder.proj1.weight", "class_tokens", "pos_embed", "shared_blocks.0.attn_scale",
              "shared_blocks.0.norm1.weight", "u_final_layer.linear.bias"):
        assert n in adam_names, n
    assert len(muon) + len(adam) == len(list(model.parameters()))


def test_muon_step_is_a_scaled_orthogonal_matrix_and_adam_side_matches_torch_adam():
    torch.manual_seed(0)
    w, b = torch.nn.Parameter(torch.randn(24, 8)), torch.nn.Parameter(torch.randn(8))
    b_ref = torch.nn.Parameter(b.detach().clone())
    opt = Muon([dict(params=[w], kind="muon"), dict(params=[b], kind="adam")], lr=0.1, betas=(0.9, 0.95))
    ref = torch.optim.Adam([b_ref], lr=0.1, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(4):
        g = torch.randn(24, 8)
        gb = torch.randn(8)
        w0 = w.detach().clone()
        w.grad, b.grad, b_ref.grad = g, gb.clone(), gb.clone()
        opt.step()
        ref.step()
        update = (w0 - w.detach()) / (0.1 * math.sqrt(24 / 8))  # shape scaling sqrt(max(1, out/in))
        s = torch.linalg.svdvals(update)
        assert s.min() > 0.5 and s.max() < 1.3
        torch.testing.assert_close(b, b_ref)
    with pytest.raises(ValueError, match="2-D"):
        Muon([dict(params=[b], kind="muon")])


def test_build_optimizer_and_schedules():
    model = PMFDiT(model_config("pMF-Tiny/4"))
    assert isinstance(build_optimizer(model, OptimConfig(name="adamw", lr=1e-3)), torch.optim.AdamW)
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-2, adam_lr=1e-3))
    assert [g["kind"] for g in opt.param_groups] == ["muon", "adam"]
    assert set_lr(opt, 0.5) == 5e-3 and opt.param_groups[1]["lr"] == 5e-4
    const, warm = OptimConfig(), OptimConfig(schedule="warmup", warmup_steps=10)
    cos = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, const, 100) == lr_factor(99, const, 100) == 1.0
    assert lr_factor(0, warm, 100) == 0.1 and lr_factor(9, warm, 100) == 1.0 and lr_factor(50, warm, 100) == 1.0
    assert lr_factor(10, cos, 100) == pytest.approx(1.0) and lr_factor(100, cos, 100) == pytest.approx(0.1)
    assert lr_factor(55, cos, 100) == pytest.approx(0.55)
