"""Fixtures of the command-line tests."""

import pytest
import torch

from helpers import ARCH, random_model


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory):
    """Our checkpoint format with a recipe sampling setting and two EMAs."""
    model = random_model()
    path = tmp_path_factory.mktemp("ckpt") / "step.pt"
    state = model.state_dict()
    emas = {"d0.9": random_model(1).state_dict(), "d0.99": state}
    train_config = {"arch": ARCH, "sample": {"omega": 2.0, "t_min": 0.2, "t_max": 0.7}}
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": state, "ema": emas,
                "train_config": train_config}, path)
    return path
