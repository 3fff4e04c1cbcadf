"""The facts of the released pMF models, one row per released preset: the inference setting their weights
were released with (spec section 4), their FID-50K at it (the release's table), and what differs between their
training recipes (spec section 6). The sampling defaults, the training recipes, the hub model card and the
class names of ImageNet models all read this table."""

from __future__ import annotations

from typing import NamedTuple


class ReleasedRecipe(NamedTuple):
    """What differs between the released ImageNet training recipes (spec section 6)."""

    P_mean: float  # centre of the logit-normal time draws
    cfg_beta: float  # exponent of the guidance-scale distribution
    max_t: float  # the release config's perceptual_max_t: both perceptual terms are zeroed for t >= max_t
    tr_uniform: bool  # 10% of the time draws uniform
    convnext_max_t: float | None = None  # the H configs' field: the ConvNeXt term only (docs/perceptual.md)


class ReleasedModel(NamedTuple):
    """One released model: its released inference setting, its FID-50K there, and its training recipe."""

    omega: float  # guidance scale
    t_min: float  # guidance interval
    t_max: float
    ema_halflife_kimg: int  # the EMA half-life whose weights were released
    fid: float  # FID-50K of the released weights at this setting
    recipe: ReleasedRecipe


RELEASED: dict[str, ReleasedModel] = {
    #                         omega t_min t_max  EMA   FID          P_mean cfg_beta max_t tr_uniform convnext_max_t
    "pMF-B/16": ReleasedModel(7.5, 0.1, 0.8, 2000, 3.15, ReleasedRecipe(0.8, 1.0, 0.8, False)),
    "pMF-L/16": ReleasedModel(7.0, 0.2, 0.7, 1000, 2.51, ReleasedRecipe(0.8, 2.0, 0.8, False)),
    "pMF-H/16": ReleasedModel(7.0, 0.2, 0.6, 1000, 2.15, ReleasedRecipe(0.0, 1.0, 1.0, True, 0.6)),
    "pMF-B/32": ReleasedModel(6.5, 0.1, 0.7, 2000, 3.63, ReleasedRecipe(0.8, 1.0, 0.8, False)),
    "pMF-L/32": ReleasedModel(7.5, 0.2, 0.6, 2000, 2.69, ReleasedRecipe(0.0, 1.0, 0.6, False)),
    "pMF-H/32": ReleasedModel(5.5, 0.1, 0.6, 500, 2.36, ReleasedRecipe(0.0, 1.0, 1.0, True, 0.6)),
}


def released(arch: str | None) -> ReleasedModel | None:
    """The row of a released preset, or None for any other name (or none)."""
    return RELEASED.get(arch) if arch else None


def imagenet_data(arch: str) -> str:
    """The packed ImageNet a released preset's recipes train on: 256 px for patch 16, 512 px for patch 32."""
    return "data/imagenet256.pmfpack" if arch.endswith("/16") else "data/imagenet512.pmfpack"
