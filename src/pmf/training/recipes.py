"""The named training recipes (``pmf train --recipe``): the released ImageNet recipes (spec section 6, one per
row of ``pmf.released_models.RELEASED``), the FD-loss post-training recipes, and small CPU recipes."""

from __future__ import annotations

import functools

from ..errors import PMFError
from ..perceptual.config import PerceptualConfig
from ..posttrain.fd_config import recipe_fd, recipe_fd_imagenet
from ..released_models import RELEASED, imagenet_data
from .config import EMAConfig, LossConfig, OptimConfig, SampleConfig, TrainConfig


def imagenet_recipe(arch: str) -> TrainConfig:
    """A released ImageNet recipe from its row of ``pmf.released_models.RELEASED``: batch 1024, 320 epochs of
    1,281,167 images, the release's optimiser at 1e-3 constant, EMA half-lives 500, 1000 and 2000 kimg, LPIPS 0.4
    + ConvNeXt 0.1 perceptual losses; its sample grids use the released inference setting."""
    model = RELEASED[arch]
    row = model.recipe
    steps = 320 * 1281167 // 1024
    return TrainConfig(
        arch=arch, data=imagenet_data(arch),
        batch_size=1024, steps=steps,
        loss=LossConfig(P_mean=row.P_mean, P_std=0.8, cfg_beta=row.cfg_beta, tr_uniform=row.tr_uniform),
        optim=OptimConfig(name="muon", lr=1e-3), ema=EMAConfig(halflives_kimg=[500, 1000, 2000]),
        sample=SampleConfig(every=5000, count=64, omega=model.omega, t_min=model.t_min, t_max=model.t_max),
        perceptual=PerceptualConfig(lpips=True, convnext=True, lpips_lambda=0.4, convnext_lambda=0.1,
                                    max_t=row.max_t, convnext_max_t=row.convnext_max_t),
        out=f"runs/{arch.replace('/', '-')}", log_every=100, ckpt_every=5000, precision="bf16", num_workers=8)


def recipe_mnist() -> TrainConfig:
    """The CPU recipe of spec section 9: pMF-MNIST/7 on MNIST-5k, batch 64, Muon 1e-2, EMA 0.99."""
    return TrainConfig(
        arch="pMF-MNIST/7", data="mnist-5k", batch_size=64, steps=1200,
        loss=LossConfig(P_mean=0.8, P_std=0.8), optim=OptimConfig(name="muon", lr=1e-2),
        ema=EMAConfig(halflives_kimg=[], decays=[0.99, 0.999]),
        sample=SampleConfig(every=200, count=100, omega=3.0, t_min=0.1, t_max=0.8),
        out="runs/mnist", log_every=20, ckpt_every=200, keep_last=2, device="cpu")


def recipe_tiny() -> TrainConfig:
    """A seconds-long CPU run of the 0.4M-parameter pMF-Tiny/4 on 32x32 digits, for tests and smoke checks."""
    return TrainConfig(
        arch="pMF-Tiny/4", data="digits", batch_size=16, steps=20,
        optim=OptimConfig(name="muon", lr=1e-2), ema=EMAConfig(halflives_kimg=[0.5], decays=[0.9]),
        sample=SampleConfig(every=10, count=16), out="runs/tiny", log_every=5, ckpt_every=10, keep_last=2,
        device="cpu")


RECIPES = {**{arch: functools.partial(imagenet_recipe, arch) for arch in RELEASED},
           "mnist": recipe_mnist, "tiny": recipe_tiny, "fd": lambda: TrainConfig(**recipe_fd()),
           **{f"fd-{arch}": functools.partial(lambda a: TrainConfig(**recipe_fd_imagenet(a)), arch)
              for arch in RELEASED}}


def recipe(name: str) -> TrainConfig:
    """A fresh TrainConfig of a named recipe (the ImageNet names match the model presets)."""
    if name not in RECIPES:
        raise PMFError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]()
