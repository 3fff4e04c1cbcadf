"""/openapi.json of pmf serve states what the server enforces: the schema's limits come from the loaded model,
every status the server answers is documented, and schemathesis finds nothing against a live server."""

import subprocess
import sys

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from helpers import random_model, start_serve  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = random_model(seed=2)
    path = tmp_path_factory.mktemp("openapi") / "tiny.pt"
    sd = model.state_dict()
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd,
                "train_config": {"arch": "pMF-Tiny/4", "sample": {"omega": 2.0, "t_min": 0.1, "t_max": 0.9}}}, path)
    return path


@pytest.fixture(scope="module")
def server(ckpt):
    """``pmf serve`` on 127.0.0.1 in a child process; stopped after the module's tests."""
    proc, url = start_serve(ckpt, "--max-images", "12", "--max-steps", "2", "--threads", "1")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert "Traceback" not in out, out[-3000:]


def test_schema_states_the_limits_and_statuses(server):
    spec = httpx.get(f"{server}/openapi.json").json()
    post = spec["paths"]["/generate"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert body["classes"]["minItems"] == 1 and body["classes"]["maxItems"] == 12
    index, names = body["classes"]["items"]["anyOf"]  # an index, or a name as pmf sample reads it
    assert index == {"type": "integer", "minimum": 0, "maximum": 9} and names["enum"][9:11] == ["class 9", "0"]
    assert body["seed"]["maximum"] == 2**63 - 1 and body["seed"]["minimum"] == 0
    omega = next(s for s in body["omega"]["anyOf"] if s.get("type") == "number")
    assert omega["exclusiveMinimum"] == 0
    steps = next(s for s in body["steps"]["anyOf"] if s.get("type") == "integer")
    assert (steps["minimum"], steps["maximum"]) == (1, 2)
    for t in ("t_min", "t_max"):
        unit = next(s for s in body[t]["anyOf"] if s.get("type") == "number")
        assert (unit["minimum"], unit["maximum"]) == (0, 1)
    assert "t_min <= t_max" in post["description"] and "t_max" in body["t_min"]["description"]
    responses = post["responses"]
    assert {"200", "413", "422", "503"} <= set(responses)
    assert {"image/png", "application/octet-stream", "application/json"} <= set(responses["200"]["content"])
    assert "Retry-After" in responses["503"]["headers"]
    # what the schema refuses the server refuses
    assert httpx.post(f"{server}/generate", json={"classes": []}).status_code == 422
    assert httpx.post(f"{server}/generate", json={"classes": [1], "omega": 5e-324}).status_code == 422


def test_schemathesis_finds_nothing(server, tmp_path):
    """All of schemathesis' checks but positive_data_acceptance: a request the schema allows may still break a
    rule between fields (t_min <= t_max), which JSON Schema cannot state (the descriptions do)."""
    pytest.importorskip("schemathesis", reason="needs pip install 'pixel-meanflow[dev]' (schemathesis)")
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{server}/openapi.json", "--checks", "all",
           "--exclude-checks", "positive_data_acceptance", "--max-examples", "40", "--seed", "7", "--workers", "1",
           "--generation-database", "none", "--no-color", "--report-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "No issues found" in out, out[-4000:]
