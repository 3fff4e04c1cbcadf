"""The named training recipes (pmf.training.recipes): the released ImageNet ones are the release's configs with
each model's row of pmf.released_models, and every recipe is a valid TrainConfig that survives its JSON form."""

import json

import pytest

from pmf.errors import PMFError
from pmf.released_models import RELEASED
from pmf.training.config import TrainConfig
from pmf.training.recipes import RECIPES, recipe


def test_recipes_match_the_release_table():
    b16, h16, l16 = recipe("pMF-B/16"), recipe("pMF-H/16"), recipe("pMF-L/16")
    assert (b16.loss.P_mean, b16.loss.P_std, b16.perceptual.max_t, b16.loss.tr_uniform) == (0.8, 0.8, 0.8, False)
    assert (h16.loss.P_mean, h16.perceptual.max_t, h16.perceptual.convnext_max_t, h16.loss.tr_uniform) \
        == (0.0, 1.0, 0.6, True)
    assert l16.loss.cfg_beta == 2.0
    assert (b16.sample.omega, b16.sample.t_min, b16.sample.t_max) == (7.5, 0.1, 0.8)  # the released setting
    for cfg in (b16, h16, l16):
        assert cfg.batch_size == 1024 and cfg.optim.lr == 1e-3 and cfg.optim.schedule == "constant"
        assert cfg.optim.betas == (0.9, 0.95) and cfg.ema.halflives_kimg == [500, 1000, 2000]


def test_every_recipe_is_a_config_that_survives_json():
    assert {*RELEASED, *(f"fd-{a}" for a in RELEASED), "mnist", "tiny", "fd"} == set(RECIPES)
    for name in RECIPES:
        cfg = recipe(name)
        assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert recipe("pMF-B/32").data.endswith("imagenet512.pmfpack")
    with pytest.raises(PMFError, match="unknown recipe 'x'; known recipes: pMF-B/16"):
        recipe("x")
