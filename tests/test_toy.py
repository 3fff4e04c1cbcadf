"""The Swiss-roll toy: its pieces, and the direction of the x- vs u-prediction effect on a quick run."""

import json

import pytest
import torch

from pmf.cli import main
from pmf.errors import PMFError
from pmf.objective import pmf_loss
from pmf.toy import ToyConfig, ToyMLP, embedding, sliced_wasserstein, swiss_roll, toy_draws


def test_embedding_has_orthonormal_columns_and_is_seeded():
    A = embedding(64, torch.Generator().manual_seed(3))
    assert A.shape == (64, 2)
    assert torch.allclose(A.T @ A, torch.eye(2), atol=1e-6)
    assert torch.equal(A, embedding(64, torch.Generator().manual_seed(3)))


def test_swiss_roll_spans_about_unit_box():
    s = swiss_roll(20000, torch.Generator().manual_seed(0))
    assert s.abs().max() <= 1.0 + 1e-6
    assert (s.max(0).values - s.min(0).values).min() > 1.5  # not squashed into a blob
    assert s.std(0).max() < 0.7  # and not unit variance (which N(0, I) would imitate)


def test_toy_draws_respect_r_le_t_and_flow_matching_share():
    d = toy_draws(100, 8, fm_fraction=0.25, noise_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert (d.r <= d.t).all() and (d.t <= 1).all() and (d.r >= 0).all()
    assert (d.t[:25] == d.r[:25]).all() and (d.t[25:] > d.r[25:]).all()
    assert d.noise.shape == (100, 8, 1, 1)
    assert torch.equal(d.omega, 1 + d.t) and d.drop.all()  # time input; all labels dropped, so v_g = v_t


def test_sliced_wasserstein_zero_on_itself_and_sees_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, generator=g)
    assert sliced_wasserstein(a, a, 32, torch.Generator().manual_seed(1)) == 0.0
    shifted = sliced_wasserstein(a, a + torch.tensor([2.0, 0.0, 0.0]), 64, torch.Generator().manual_seed(1))
    assert 0.5 < shifted < 2.0  # mean |cos| projection of a shift of 2 in 3-D


@pytest.mark.parametrize("jvp", ["split", "fused", "inline"])
@pytest.mark.parametrize("prediction", ["x", "u"])
def test_mlp_trains_through_pmf_loss(prediction, jvp):
    dim = 5
    model = ToyMLP(dim, width=32, depth=3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, dim, 1, 1, generator=g)
    draws = toy_draws(16, dim, fm_fraction=0.25, noise_scale=1.0, generator=g)
    out = pmf_loss(model, x, torch.zeros(16, dtype=torch.long), draws, num_classes=1, prediction=prediction, jvp=jvp)
    out.loss.backward()
    assert out.V.shape == x.shape and torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.parameters())


def test_config_names_the_bad_field():
    with pytest.raises(PMFError, match="dims"):
        ToyConfig(dims=(1, 8))
    with pytest.raises(PMFError, match="fm_fraction"):
        ToyConfig(fm_fraction=1.5)


def test_quick_run_shows_x_prediction_beats_u_prediction(tmp_path, capsys):
    assert main(["toy", "--quick", "--out", str(tmp_path), "--no-progress", "--seed", "0"]) == 0
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "toy.png").stat().st_size > 0
    assert "D-dim SW" in capsys.readouterr().out
    rows = {(r["dim"], r["prediction"]): r for r in doc["results"]}
    for r in doc["results"]:
        assert set(r) >= {"dim", "prediction", "distance", "distance_full", "off_manifold", "final_loss"}
    top = max(r["dim"] for r in doc["results"])
    x, u = rows[(top, "x")], rows[(top, "u")]
    assert u["off_manifold"] > 10 * x["off_manifold"]
    assert u["distance_full"] > 2 * x["distance_full"]
    assert u["final_loss"] > 2 * x["final_loss"]
    assert doc["settings"]["seed"] == 0 and sorted(doc["settings"]["dims"]) == sorted({d for d, _ in rows})


def test_time_input_carries_the_tangent_of_t():
    """du/dt through (h = t - r, omega = 1 + t) must match a finite difference in t at fixed r."""
    model = ToyMLP(4, width=16, depth=3, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        model.out.weight.normal_(generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    z, t, r = torch.randn(3, 4, 1, 1, generator=g).double(), torch.tensor([0.3, 0.6, 0.9]).double(), 0.1

    def f(t_):
        return model(z, t_ - r, 1 + t.detach() + 0 * t_, heads="u")[0]  # omega: a constant, like the draws

    _, tangent = torch.func.jvp(f, (t,), (torch.ones_like(t),))
    eps = 1e-6
    fd = (model(z, t + eps - r, 1 + t + eps)[0] - model(z, t - eps - r, 1 + t - eps)[0]) / (2 * eps)
    assert torch.allclose(tangent, fd, atol=1e-6)


@pytest.mark.parametrize("prediction", ["x", "u"])
def test_inline_tangent_matches_split(prediction):
    """The MLP's hand-written tangent (pmf_loss's default "inline" form) equals torch.func.jvp's."""
    dim = 6
    model = ToyMLP(dim, width=32, depth=4, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        model.out.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, dim, 1, 1, generator=g).double()
    draws = toy_draws(32, dim, fm_fraction=0.25, noise_scale=1.0, generator=g)
    draws = type(draws)(**{k: v.double() if v.is_floating_point() else v for k, v in vars(draws).items()})
    y = torch.zeros(32, dtype=torch.long)
    outs = {j: pmf_loss(model, x, y, draws, num_classes=1, prediction=prediction, jvp=j) for j in ("split", "inline")}
    assert torch.allclose(outs["inline"].du_dt, outs["split"].du_dt, atol=1e-10)
    assert torch.allclose(outs["inline"].loss, outs["split"].loss, atol=1e-12)
