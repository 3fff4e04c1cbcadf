"""EMAs: the EDM half-life schedule with ramp-up (spec section 6), constant decays, save and restore."""

import pytest
import torch

from pmf.training.config import EMAConfig
from pmf.training.ema import EMASet, edm_beta


def test_edm_beta_matches_the_formula_and_ramps_up():
    assert edm_beta(0, 1024, 500) == 0.0  # the first update copies the weights
    assert edm_beta(100, 1024, 500) == pytest.approx(0.5 ** (1024 / (100 * 1024 * 0.05)))  # ramp-up
    assert edm_beta(10**6, 1024, 500) == pytest.approx(0.5 ** (1024 / 500_000))  # the half-life
    late = edm_beta(10**6, 1024, 2000)
    assert late ** (2_000_000 / 1024) == pytest.approx(0.5)  # half weight after 2000 kimg


def test_ema_set_updates_saves_and_restores():
    model = torch.nn.Linear(3, 2)
    emas = EMASet(model, EMAConfig(halflives_kimg=[1.0], decays=[0.9]), batch_size=10)
    assert emas.names == ["hl1", "d0.9"]
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    emas.update(model, step=1)
    torch.testing.assert_close(emas.weights["d0.9"]["weight"], 0.9 * w0 + 0.1 * (w0 + 1))
    beta = edm_beta(1, 10, 1.0)
    torch.testing.assert_close(emas.weights["hl1"]["weight"], beta * w0 + (1 - beta) * (w0 + 1))
    other = EMASet(torch.nn.Linear(3, 2), EMAConfig(halflives_kimg=[1.0], decays=[0.9]), batch_size=10)
    other.load_state_dict(emas.state_dict())
    torch.testing.assert_close(other.weights["d0.9"]["weight"], emas.weights["d0.9"]["weight"])
    with pytest.raises(KeyError, match="missing"):
        EMASet(model, EMAConfig(halflives_kimg=[], decays=[0.5]), 10).load_state_dict(emas.state_dict())
