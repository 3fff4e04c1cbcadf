"""The released models' facts have one home (pmf.released_models): the sampling default, the training recipe, the
hub model card and the class names of a released preset all read its row, and no other module writes them."""

import pytest

from helpers import written_again
from pmf.checkpoints.hub_card import model_card
from pmf.data.class_names import class_names, imagenet_names
from pmf.model_configs import PRESETS, model_config
from pmf.released_models import RELEASED, ReleasedModel, ReleasedRecipe, imagenet_data, released
from pmf.sampling_setting import default_setting
from pmf.training.recipes import recipe


def test_every_released_model_is_a_preset_trained_on_imagenet_at_its_size():
    assert len(RELEASED) == 6
    for arch in RELEASED:
        assert arch in PRESETS and PRESETS[arch]["num_classes"] == 1000
        assert str(PRESETS[arch]["input_size"]) in imagenet_data(arch)
    assert released("pMF-Tiny/4") is None and released(None) is None


def test_the_readers_follow_the_row(monkeypatch):
    row = ReleasedModel(4.5, 0.3, 0.9, 500, 9.87, ReleasedRecipe(0.1, 3.0, 0.5, True, 0.4))
    monkeypatch.setitem(RELEASED, "pMF-B/16", row)
    s = default_setting(model_config("pMF-B/16", v_head=False), {"arch": "pMF-B/16"}, ["hl500", "hl1000"])
    assert (s.omega, s.t_min, s.t_max, s.ema) == (4.5, 0.3, 0.9, "hl500")
    cfg = recipe("pMF-B/16")
    assert (cfg.sample.omega, cfg.sample.t_min, cfg.sample.t_max) == (4.5, 0.3, 0.9)
    assert (cfg.loss.P_mean, cfg.loss.cfg_beta, cfg.loss.tr_uniform) == (0.1, 3.0, True)
    assert (cfg.perceptual.max_t, cfg.perceptual.convnext_max_t) == (0.5, 0.4)
    card = model_card({"config": model_config("pMF-B/16").to_dict(), "preset": "pMF-B/16",
                       "sampling_setting": s.to_dict()})
    assert "FID-50K **9.87**" in card


def test_a_released_preset_has_the_imagenet_class_names():
    names = class_names(1000, arch="pMF-L/32")
    assert names == (imagenet_names() or [f"class {i}" for i in range(1000)])
    assert class_names(1000, arch="pMF-B/16", data="mydata")[0] == names[0]
    assert class_names(1000, arch="pMF-Tiny/4")[0] == "class 0"


@pytest.mark.parametrize("pattern", [
    r"RELEASED_SAMPLING|RELEASED_FID|IMAGENET_RECIPES",  # the tables this module replaced
    r"\b(3\.15|2\.51|2\.15|3\.63|2\.69|2\.36)\b",  # the released FIDs
    r'"pMF-[BLH]"',  # a preset-prefix test for "released"
    r"imagenet(256|512)\.pmfpack",  # the recipes' data
])
def test_the_release_facts_are_written_once(pattern):
    assert not written_again(pattern, home="released_models.py")
