"""The request limits of pmf serve live in ``ServeLimits`` alone: its request model both refuses a request outside
them and states them in the schema, and a model whose own default lies outside them does not start."""

import pytest

pytest.importorskip("fastapi")

from pydantic import ValidationError  # noqa: E402

import pmf  # noqa: E402
from pmf.sampling_setting import SamplingSetting  # noqa: E402
from pmf.serve.app import ModelInfo, RequestProblem, ServeLimits, _check, create_app, parse_request  # noqa: E402

NAMES = ["cat", "dog"]


def test_the_request_model_enforces_and_states_the_limits():
    limits = ServeLimits(max_images=3, max_steps=2)
    model = limits.request_model(NAMES)
    schema = model.model_json_schema()["properties"]
    steps = next(s for s in schema["steps"]["anyOf"] if s.get("type") == "integer")
    assert (schema["classes"]["minItems"], schema["classes"]["maxItems"]) == (1, 3)
    assert (steps["minimum"], steps["maximum"]) == (1, 2)
    assert model(classes=[0, "dog", 1], steps=2).steps == 2
    for bad in ({"classes": [0] * 4}, {"classes": []}, {"classes": [0], "steps": 3}, {"classes": [0], "steps": 0}):
        with pytest.raises(ValidationError):
            model(**bad)
    with pytest.raises(RequestProblem) as err:
        parse_request(b'{"classes": [0, 0, 0, 0]}', model)
    assert err.value.field == "classes" and "at most 3 images" in str(err.value)
    onnx = ServeLimits(max_images=3, max_steps=2, min_steps=2).request_model(NAMES)  # a 2-step graph
    with pytest.raises(ValidationError):
        onnx(classes=[0], steps=1)


def test_check_keeps_the_rules_a_schema_cannot_state():
    info = ModelInfo(None, 8, 3, NAMES, SamplingSetting(omega=2.0, t_min=0.1, t_max=0.9), 1.0, None)
    model = ServeLimits().request_model(NAMES)
    job = _check(model(classes=["dog", 0], seed=4), info)
    assert (job.labels, job.seed, job.omega, job.t_min, job.t_max, job.steps) == ((1, 0), 4, 2.0, 0.1, 0.9, 1)
    with pytest.raises(RequestProblem) as err:
        _check(model(classes=[0], t_min=0.95), info)  # above the model's t_max
    assert err.value.field == "t_min"


def test_a_default_outside_the_limits_does_not_start():
    info = ModelInfo(None, 8, 3, NAMES, SamplingSetting(steps=3), 1.0, None)
    with pytest.raises(pmf.PMFError, match="3 step\\(s\\) by default, outside the request limits \\[1, 2\\]"):
        create_app(None, info, ServeLimits(max_steps=2))
