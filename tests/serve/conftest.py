"""Fixtures of the pmf serve tests: a training-format checkpoint of the official tiny weights, the app built from
it, a client of that app, and the model it serves."""

import pytest
import torch

import pmf
from helpers import SERVE_SETTING as SETTING
from helpers import serve_args


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_release_sd):
    """A training-format checkpoint of the official tiny weights with a recipe (data 'digits', a sampling setting)."""
    model = pmf.load_release_state_dict(pmf.build_model("pMF-Tiny/4"), tiny_release_sd)
    path = tmp_path_factory.mktemp("serve") / "tiny.pt"
    sd = model.state_dict()
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd,
                "ema": {"d0.99": sd}, "train_config": {"arch": "pMF-Tiny/4", "data": "digits", "sample": SETTING}},
               path)
    return path


@pytest.fixture(scope="module")
def served(ckpt):
    from pmf.commands.serve import build

    app, info, batcher = build(serve_args(ckpt, "--max-images", "16", "--max-wait-ms", "20"))
    return app, info, batcher


@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    with TestClient(served[0]) as c:
        yield c


@pytest.fixture(scope="module")
def model(ckpt):
    return pmf.load_checkpoint(ckpt).model
