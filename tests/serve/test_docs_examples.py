"""The example errors of docs/serve.md are what the server answers (a model of the built-in digits' classes)."""

import json
import shlex
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from helpers import random_model  # noqa: E402
from pmf.cli import build_parser  # noqa: E402
from pmf.commands.serve import build  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "serve.md"


def test_the_documented_errors_are_the_servers(tmp_path):
    lines = DOC.read_text().splitlines()
    examples = [(shlex.split(ln[2:])[-1], lines[i + 1]) for i, ln in enumerate(lines)
                if ln.startswith("$ curl") and "/generate" in ln]
    assert len(examples) >= 3
    model = random_model(seed=1)
    ckpt = tmp_path / "digits.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict(),
                "train_config": {"arch": "pMF-Tiny/4", "data": "digits"}}, ckpt)
    app, _, _ = build(build_parser().parse_args(["serve", "--checkpoint", str(ckpt)]))
    with TestClient(app) as client:
        for body, answer in examples:
            resp = client.post("/generate", content=body)
            assert resp.status_code == 422 and resp.json() == json.loads(answer), (body, resp.text)
