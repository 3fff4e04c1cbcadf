"""Typed training configuration and the named recipes: the released ImageNet recipes (spec section 6) and
small CPU recipes. Every config validates on construction with messages that name the field; the resolved
config is saved as JSON beside each checkpoint and read back with ``TrainConfig.from_dict``."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import NamedTuple

from .config import PRESETS, RELEASED_SAMPLING, dataclass_from_dict
from .errors import PMFError
from .perceptual.config import PerceptualConfig


def _check(cond: bool, name: str, value, want: str) -> None:
    if not cond:
        raise PMFError(f"{name} must be {want}, got {value!r}")


@dataclass
class LossConfig:
    """Randomness and weighting of the pMF objective (spec section 3)."""

    P_mean: float = 0.8
    P_std: float = 0.8
    data_proportion: float = 0.5
    cfg_max: float = 7.0
    cfg_beta: float = 1.0
    class_dropout_prob: float = 0.1
    class_dropout: str = "first-rows"  # which rows lose their label (pmf.objective.CLASS_DROPOUTS)
    tr_uniform: bool = False
    norm_p: float = 1.0
    norm_eps: float = 0.01
    prediction: str = "x"
    jvp: str | None = None  # how du/dt is computed (pmf.objective.JVP_MODES); None: pmf_loss's default
    tangent_attention: str = "math"  # attention's tangent in the inline du/dt: "math" or "triton" (CUDA kernel)

    def __post_init__(self) -> None:
        _check(self.P_std > 0, "loss.P_std", self.P_std, "> 0")
        _check(0 <= self.data_proportion <= 1, "loss.data_proportion", self.data_proportion, "in [0, 1]")
        _check(self.cfg_max >= 0, "loss.cfg_max", self.cfg_max, ">= 0")
        _check(0 <= self.class_dropout_prob <= 1, "loss.class_dropout_prob", self.class_dropout_prob, "in [0, 1]")
        from .objective import CLASS_DROPOUTS

        _check(self.class_dropout in CLASS_DROPOUTS, "loss.class_dropout", self.class_dropout,
               " or ".join(map(repr, CLASS_DROPOUTS)))
        _check(self.norm_eps > 0, "loss.norm_eps", self.norm_eps, "> 0")
        _check(self.prediction in ("x", "u"), "loss.prediction", self.prediction, "'x' or 'u'")
        from .objective import JVP_MODES

        _check(self.jvp is None or self.jvp in JVP_MODES, "loss.jvp", self.jvp, f"None or one of {JVP_MODES}")
        from .nn.attention import TANGENT_ATTENTIONS

        _check(self.tangent_attention in TANGENT_ATTENTIONS, "loss.tangent_attention", self.tangent_attention,
               " or ".join(map(repr, TANGENT_ATTENTIONS)))
        _check(self.tangent_attention == "math" or self.jvp in (None, "inline"), "loss.jvp", self.jvp,
               "None or 'inline' with loss.tangent_attention 'triton' (the kernel serves the inline du/dt only)")


@dataclass
class OptimConfig:
    """Muon (2-D weights) + Adam (everything else) as in the release, or AdamW on everything (ablation)."""

    name: str = "muon"
    lr: float = 1e-3
    adam_lr: float | None = None  # None: the same as lr (the release uses one learning rate)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.95  # Muon momentum (Nesterov)
    ns_steps: int = 5
    foreach: bool = True  # batched Muon / multi-tensor Adam and AdamW step; same results as the per-parameter loop
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        _check(self.name in ("muon", "adamw"), "optim.name", self.name, "'muon' or 'adamw'")
        _check(self.lr > 0, "optim.lr", self.lr, "> 0")
        _check(self.adam_lr is None or self.adam_lr > 0, "optim.adam_lr", self.adam_lr, "> 0 or None")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", self.betas,
               "two numbers in [0, 1)")
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "in [0, 1)")
        _check(self.ns_steps >= 1, "optim.ns_steps", self.ns_steps, ">= 1")
        _check(isinstance(self.foreach, bool), "optim.foreach", self.foreach, "true or false")
        _check(self.schedule in ("constant", "warmup", "cosine"), "optim.schedule", self.schedule,
               "'constant', 'warmup' or 'cosine'")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")
        _check(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip", self.grad_clip, "> 0 or None")


@dataclass
class EMAConfig:
    """EDM-style half-lives in kimg (spec section 6) and/or constant decays, kept side by side."""

    halflives_kimg: list[float] = field(default_factory=lambda: [500.0, 1000.0, 2000.0])
    decays: list[float] = field(default_factory=list)
    rampup: float = 0.05

    def __post_init__(self) -> None:
        self.halflives_kimg, self.decays = [float(v) for v in self.halflives_kimg], [float(v) for v in self.decays]
        _check(all(h > 0 for h in self.halflives_kimg), "ema.halflives_kimg", self.halflives_kimg, "positive")
        _check(all(0 <= d < 1 for d in self.decays), "ema.decays", self.decays, "in [0, 1)")


@dataclass
class SampleConfig:
    """The fixed noises and classes drawn every ``every`` steps so that the same samples can be watched."""

    every: int = 1000
    count: int = 64
    seed: int = 0
    omega: float = 1.0
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self) -> None:
        _check(self.every >= 0, "sample.every", self.every, ">= 0 (0 turns grids off)")
        _check(self.count >= 1, "sample.count", self.count, ">= 1")
        _check(self.omega >= 1, "sample.omega", self.omega, ">= 1")
        _check(0 <= self.t_min <= self.t_max <= 1, "sample.t_min/t_max", (self.t_min, self.t_max),
               "0 <= t_min <= t_max <= 1")


@dataclass
class TrainConfig:
    """Everything one training run needs; ``batch_size`` is the global batch over all processes."""

    arch: str = "pMF-Tiny/4"
    model_overrides: dict = field(default_factory=dict)
    data: str = "mnist-5k"  # a built-in name, an image folder, a packed folder (.pmfpack) or an .npz/.npy file
    batch_size: int = 64
    steps: int = 1000
    seed: int = 0
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    perceptual: PerceptualConfig | None = None  # None: no perceptual loss
    out: str = "runs/pmf"
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 3
    precision: str = "fp32"  # "bf16": autocast on GPU
    compile: bool = False
    grad_checkpointing: bool = False
    num_workers: int = 4  # decoding workers for unpacked image folders
    device: str | None = None  # None: cuda if available, else cpu
    parallel: str = "ddp"  # "ddp" (replicated), "fsdp" (FSDP2 over all ranks) or "hsdp" (replicate x shard)
    shard_size: int | None = None  # hsdp: ranks per shard group (None: the local world size)
    async_checkpoint: bool = False  # fsdp/hsdp: write sharded checkpoints in the background
    reduce: str = "auto"  # gradient averaging: "ordered" (rank-order sums), "native", "auto" (ordered on gloo)
    # starting weights (pmf.finetune): a checkpoint pmf.load_checkpoint reads; None: a fresh model
    init: str | None = None
    init_ema: str | None = None  # which weights of init: an EMA name or "raw"; None: its sampling EMA
    init_v_head: str = "copy"  # a missing v-head: "copy" (the u-head's blocks) or "fresh"
    class_map: dict = field(default_factory=dict)  # {new class: checkpoint class}, names or numbers

    def __post_init__(self) -> None:
        for name, cls in (("loss", LossConfig), ("optim", OptimConfig), ("ema", EMAConfig), ("sample", SampleConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, dataclass_from_dict(cls, value, name))
        if isinstance(self.perceptual, dict):  # the form of config.json files
            self.perceptual = PerceptualConfig.from_dict(self.perceptual)
        if self.arch not in PRESETS:
            raise PMFError(f"unknown architecture {self.arch!r}; known presets: {', '.join(PRESETS)}")
        for name in ("batch_size", "steps"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, getattr(self, name),
                   "a positive integer")
        for name in ("log_every", "ckpt_every", "keep_last"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        _check(self.precision in ("fp32", "bf16"), "precision", self.precision, "'fp32' or 'bf16'")
        _check(self.num_workers >= 0, "num_workers", self.num_workers, ">= 0")
        _check(self.parallel in ("ddp", "fsdp", "hsdp"), "parallel", self.parallel, "'ddp', 'fsdp' or 'hsdp'")
        _check(self.reduce in ("auto", "ordered", "native"), "reduce", self.reduce, "'auto', 'ordered' or 'native'")
        from .finetune import V_HEAD_INITS

        _check(self.init_v_head in V_HEAD_INITS, "init_v_head", self.init_v_head, " or ".join(map(repr, V_HEAD_INITS)))
        _check(not self.class_map or self.init is not None, "class_map", self.class_map, "empty without init")
        _check(self.shard_size is None or (isinstance(self.shard_size, int) and self.shard_size >= 1), "shard_size",
               self.shard_size, "None or a positive integer")
        # forward-mode AD (torch.autograd.forward_ad) fails inside FSDP2's custom autograd functions
        _check(not (self.parallel != "ddp" and self.loss.jvp == "fused"), "loss.jvp", self.loss.jvp,
               "None, 'inline' or 'split' with parallel 'fsdp' or 'hsdp' (the fused form does not run under FSDP2)")
        # the backward recomputation runs outside forward-mode AD, so it cannot rebuild the dual pass
        _check(not (self.grad_checkpointing and self.loss.jvp == "fused"), "loss.jvp", self.loss.jvp,
               "None, 'inline' or 'split' with grad_checkpointing")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return dataclass_from_dict(cls, data, "TrainConfig")



class ImageNetRecipe(NamedTuple):
    """What differs between the released ImageNet recipes (spec section 6); their sample grids use the released
    inference setting (``config.RELEASED_SAMPLING``)."""

    P_mean: float  # centre of the logit-normal time draws
    cfg_beta: float  # exponent of the guidance-scale distribution
    max_t: float  # the release config's perceptual_max_t: both perceptual terms are zeroed for t >= max_t
    tr_uniform: bool  # 10% of the time draws uniform
    convnext_max_t: float | None = None  # the H configs' field: the ConvNeXt term only (docs/perceptual.md)


IMAGENET_RECIPES = {  # one row per released model
    #            P_mean cfg_beta max_t tr_uniform convnext_max_t
    "pMF-B/16": ImageNetRecipe(0.8, 1.0, 0.8, False),
    "pMF-L/16": ImageNetRecipe(0.8, 2.0, 0.8, False),
    "pMF-H/16": ImageNetRecipe(0.0, 1.0, 1.0, True, 0.6),
    "pMF-B/32": ImageNetRecipe(0.8, 1.0, 0.8, False),
    "pMF-L/32": ImageNetRecipe(0.0, 1.0, 0.6, False),
    "pMF-H/32": ImageNetRecipe(0.0, 1.0, 1.0, True, 0.6),
}


def imagenet_recipe(arch: str) -> TrainConfig:
    """A released ImageNet recipe from its row of ``IMAGENET_RECIPES``: batch 1024, 320 epochs of 1,281,167
    images, the release's optimiser at 1e-3 constant, EMA half-lives 500, 1000 and 2000 kimg, LPIPS 0.4 +
    ConvNeXt 0.1 perceptual losses."""
    row, grid = IMAGENET_RECIPES[arch], RELEASED_SAMPLING[arch]
    steps = 320 * 1281167 // 1024
    return TrainConfig(
        arch=arch, data="data/imagenet256.pmfpack" if arch.endswith("/16") else "data/imagenet512.pmfpack",
        batch_size=1024, steps=steps,
        loss=LossConfig(P_mean=row.P_mean, P_std=0.8, cfg_beta=row.cfg_beta, tr_uniform=row.tr_uniform),
        optim=OptimConfig(name="muon", lr=1e-3), ema=EMAConfig(halflives_kimg=[500, 1000, 2000]),
        sample=SampleConfig(every=5000, count=64, omega=grid["omega"], t_min=grid["t_min"], t_max=grid["t_max"]),
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


RECIPES = {**{arch: functools.partial(imagenet_recipe, arch) for arch in IMAGENET_RECIPES},
           "mnist": recipe_mnist, "tiny": recipe_tiny}


def recipe(name: str) -> TrainConfig:
    """A fresh TrainConfig of a named recipe (the ImageNet names match the model presets)."""
    if name not in RECIPES:
        raise PMFError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]()
