"""What PMFDiT owns about its calls: one return type (``Predictions``) whatever it is asked, and its value checks, a
construction option that nobody toggles from outside (skipped by the network itself while it is traced)."""

import re
from pathlib import Path

import pytest
import torch

from helpers import network_args, random_model
from pmf.errors import PMFError
from pmf.nn.model import PMFDiT, Predictions, u_head_only

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
CONSTRUCTOR = "self._options = dict(attention_layout=check_layout(attention_layout), check_values=bool(check_values),"


@pytest.mark.parametrize("heads, tangents, present", [
    ("uv", False, (True, True, False)),
    ("u", False, (True, False, False)),
    ("v", False, (False, True, False)),
    ("uv", True, (True, True, True)),
    ("u", True, (True, False, True)),
])
def test_forward_returns_predictions_whatever_it_is_asked(heads, tangents, present):
    model = random_model(seed=2)
    z = torch.randn(2, 3, 32, 32)
    args = network_args(z, [1, 7])
    kw = dict(tangents=(torch.randn_like(z), torch.ones(2))) if tangents else {}
    with torch.no_grad():
        out = model(*args, heads=heads, **kw)
    assert type(out) is Predictions and len(out) == 3
    assert tuple(v is not None for v in out) == present
    assert all(v.shape == z.shape for v in out if v is not None)
    if tangents:  # the same predictions as without tangents
        plain = model(*args, heads=heads)
        torch.testing.assert_close(out.x_u, plain.x_u, rtol=0, atol=1e-6)
        assert type(model.forward_with_tangent(*args, *kw["tangents"], heads=heads)) is Predictions


@pytest.mark.parametrize("bad, match", [
    (dict(y=torch.tensor([3, 11])), r"^label 11 out of range \[0, 10\] \(10 is the null label\)$"),
    (dict(omega=torch.tensor([1.0, 0.0])), "omega must be > 0"),
])
def test_value_checks_raise_one_line_on_the_cpu(bad, match):
    model = PMFDiT(random_model().config)
    assert model.check_values
    args = dict(z=torch.randn(2, 3, 32, 32), h=0.5, omega=2.0, t_min=0.1, t_max=0.9, y=torch.tensor([1, 2]))
    with pytest.raises(PMFError, match=match) as err:
        model(**{**args, **bad})
    assert "\n" not in str(err.value)


def test_value_checks_are_a_construction_option_that_copies_keep():
    config = random_model().config
    unchecked = PMFDiT(config, check_values=False)
    bad_guidance = (torch.randn(2, 3, 32, 32), 0.5, 2.0, 0.9, 0.1, torch.tensor([1, 2]))  # t_min > t_max
    with pytest.raises(PMFError, match="t_min <= t_max"):
        PMFDiT(config)(*bad_guidance)
    assert unchecked(*bad_guidance).x_u.shape == (2, 3, 32, 32)  # no check: runs
    with pytest.raises(PMFError, match=r"expected images of shape \[B, 3, 32, 32\]"):  # shapes always
        unchecked(torch.randn(2, 3, 16, 16), *bad_guidance[1:])
    with pytest.raises(AttributeError):
        unchecked.check_values = True
    assert not u_head_only(unchecked).check_values and u_head_only(unchecked, check_values=True).check_values
    assert u_head_only(PMFDiT(config, attention_layout="tokens")).options == dict(
        attention_layout="tokens", check_values=True, activation_checkpointing=False)


def test_value_checks_are_skipped_while_tracing():
    """The data-dependent checks would stop a trace (a Python bool of a tensor); the network skips them itself."""
    model = random_model(seed=1, depth=2, aux_head_depth=1, v_head=False)
    args = network_args(torch.randn(2, 3, 32, 32), [1, 7])
    program = torch.export.export(model, args, kwargs={"heads": "u"})
    torch.testing.assert_close(program.module()(*args, heads="u").x_u, model(*args, heads="u").x_u)


def test_nobody_sets_the_networks_options_from_outside():
    """No code assigns ``validate_inputs`` / ``check_values`` / ``_options`` of a network (the options are set by
    PMFDiT's constructor only)."""
    setter = re.compile(r"\.(validate_inputs|check_values|_options)\s*=[^=]")
    files = [p for top in ("src", "benchmarks", "tests") for p in sorted((ROOT / top).rglob("*.py"))
             if p != Path(__file__).resolve()]
    hits = [f"{p.relative_to(ROOT)}: {line.strip()}" for p in files for line in p.read_text().splitlines()
            if setter.search(line)]
    assert hits == [f"src/pmf/nn/model.py: {CONSTRUCTOR}"], hits
    assert not [p for p in files if "validate_inputs" in p.read_text()]
