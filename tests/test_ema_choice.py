"""Which weights an ``ema`` value asks for has one home (pmf.ema_choice), used by load_checkpoint for every
checkpoint kind."""

import pytest

from helpers import written_again
from pmf.checkpoints.load import load_checkpoint
from pmf.ema_choice import RAW, asks_default, asks_named_ema
from pmf.errors import PMFError


def test_what_each_value_asks():
    assert [asks_default(v) for v in (None, "auto", RAW, "hl1000")] == [True, True, False, False]
    assert [asks_named_ema(v) for v in (None, "auto", RAW, "hl1000", "d0.99")] == [False, False, False, True, True]


def test_a_file_of_one_weight_set_takes_the_default_and_raw_only(fixtures_dir):
    net = fixtures_dir / "net_tiny.pt"
    assert load_checkpoint(net, arch="pMF-Tiny/4", ema=RAW).ema is None
    with pytest.raises(PMFError, match="--ema d0.99 needs a training checkpoint"):
        load_checkpoint(net, arch="pMF-Tiny/4", ema="d0.99")


def test_the_rule_is_written_once():
    assert not written_again(r'"auto", "raw"|None, "auto"\)|[=!]= "raw"|None, "raw"\)', home="ema_choice.py")
