"""Activation checkpointing is a construction option of the network: set when it is built, read-only on its
blocks, assigned by no code outside ``Block``."""

import re
from pathlib import Path

import pytest
import torch

import pmf
from pmf.nn.layers import Block
from pmf.nn.model import PMFDiT, with_options

ROOT = Path(__file__).resolve().parents[2]


def _blocks(m):
    return [b for b in m.modules() if isinstance(b, Block)]


def test_the_option_reaches_every_block_and_is_read_only():
    m = PMFDiT(pmf.model_configs.model_config("pMF-Tiny/4"), activation_checkpointing=True)
    assert m.options["activation_checkpointing"] and all(b.checkpointing for b in _blocks(m))
    assert not any(b.checkpointing for b in _blocks(PMFDiT(m.config)))
    with pytest.raises(AttributeError):
        _blocks(m)[0].checkpointing = False
    assert all(b.checkpointing for b in _blocks(m))


def test_with_options_keeps_weights_dtype_and_the_other_options():
    torch.manual_seed(0)
    m = pmf.build_model("pMF-Tiny/4").double()
    m = with_options(m, check_values=False)
    on = with_options(m, activation_checkpointing=True)
    assert on.options == {**m.options, "activation_checkpointing": True}
    assert next(on.parameters()).dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), on.state_dict().values()))
    assert all(b.checkpointing for b in _blocks(on)) and not any(b.checkpointing for b in _blocks(m))


def test_no_code_assigns_a_blocks_checkpointing():
    assign = re.compile(r"\.(_?checkpointing)\s*=(?!=)")
    found = []
    for folder in ("src", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if assign.search(line) and not (path.name == "layers.py" and "self._checkpointing" in line):
                    found.append(f"{path.relative_to(ROOT)}:{n}")
    assert found == []
