"""The FD-loss section of the training config (``pmf train --objective fd``, flags ``--fd-*``) and the
post-training recipes: ``fd`` (the CPU example: the ``pmf demo`` model on MNIST-5k) and ``fd-pMF-B/16`` ...
``fd-pMF-H/32`` (the FD-loss paper's ImageNet runs, unmeasured here; docs/posttraining.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..errors import PMFError
from ..model_configs import doc
from ..released_models import imagenet_data


def _check(ok: bool, name: str, value, rule: str) -> None:
    if not ok:
        raise PMFError(f"fd.{name} must be {rule}, got {value!r}")


@dataclass
class FDConfig:
    """FD-loss post-training (Yang et al., arXiv 2604.28190): the model's one-step sampler at its guided setting
    is trained so that its images' features match the data's in each representation."""

    repr: list[str] = doc(factory=lambda: ["offline"], flag="--fd-repr",
                          help="comma-separated representations whose Frechet distances are minimised (pmf "
                          "representations: offline, inception, timm names)")
    ref: list[str] = doc(factory=list, flag="--fd-ref", help="comma-separated reference statistics (.npz), one per "
                         "representation; none: computed from --data, cached and written into the run folder")
    weights: list[float] = doc(factory=list, flag="--fd-weights", help="comma-separated weights, one per "
                               "representation; none: 1 each")
    ema_beta: float = doc(0.99, "decay of the moving moments of the generated features", flag="--fd-ema-beta")
    queue: int = doc(0, "statistics of a queue of the last N generated features instead of moving moments "
                     "(0: moving moments)", flag="--fd-queue")
    fill: int = doc(5000, "generated images that fill the moving moments before the first step (a queue fills "
                    "its N rows)", flag="--fd-fill")
    per_class: bool = doc(False, "match per-class statistics (one set of moments per class) instead of the "
                          "class-agnostic ones", flag="--fd-per-class")
    ref_images: int | None = doc(None, "images of --data for computed reference statistics", flag="--fd-ref-images",
                                 none="all")
    omega: float | None = doc(None, "guidance scale of the post-trained sampler", flag="--fd-omega",
                              none="the --init checkpoint's recorded setting")
    t_min: float | None = doc(None, "start of its guidance interval", flag="--fd-t-min",
                              none="the recorded setting's")
    t_max: float | None = doc(None, "end of its guidance interval", flag="--fd-t-max", none="the recorded setting's")
    eps: float = doc(0.01, "eps of the normalisation fd / (sg(fd) + eps)", flag="--fd-eps")

    def __post_init__(self) -> None:
        self.repr, self.ref = [str(r) for r in self.repr], [str(r) for r in self.ref]
        self.weights = [float(w) for w in self.weights]
        _check(len(self.repr) >= 1 and len(set(self.repr)) == len(self.repr), "repr", self.repr,
               "one or more distinct representation names")
        _check(not self.ref or len(self.ref) == len(self.repr), "ref", self.ref,
               f"one file per representation ({len(self.repr)}: {', '.join(self.repr)})")
        _check(not self.weights or len(self.weights) == len(self.repr), "weights", self.weights,
               f"one weight per representation ({len(self.repr)}: {', '.join(self.repr)})")
        _check(all(w >= 0 for w in self.weights) and (not self.weights or sum(self.weights) > 0), "weights",
               self.weights, ">= 0 with a positive sum")
        _check(0 <= self.ema_beta < 1, "ema_beta", self.ema_beta, "in [0, 1)")
        _check(self.queue == 0 or self.queue >= 2, "queue", self.queue, "0 (moving moments) or >= 2")
        _check(not (self.queue and self.per_class), "queue", self.queue, "0 with per_class (per-class statistics "
               "use moving moments)")
        _check(self.fill >= 2, "fill", self.fill, ">= 2")
        _check(self.ref_images is None or self.ref_images >= 2, "ref_images", self.ref_images, ">= 2 or None")
        _check(self.eps > 0, "eps", self.eps, "> 0")
        given = [v is None for v in (self.omega, self.t_min, self.t_max)]
        _check(all(given) or not any(given), "omega", self.omega, "given with t_min and t_max, or all three none")

    def weight_of(self) -> dict[str, float]:
        return dict(zip(self.repr, self.weights or [1.0] * len(self.repr)))


class FDRecipe(NamedTuple):
    """One row of the FD-loss paper's ImageNet post-training (their scripts, table 3): the sampler's guidance."""

    omega: float
    t_min: float
    t_max: float


# The guidance of each post-trained model, from the FD-loss public scripts (scripts/ref/table_3_pMF.sh); the noise
# scales (2 for H/16 and B/32, 4 for L/32 and H/32) are the presets' own.
FD_RECIPES = {
    "pMF-B/16": FDRecipe(8.5, 0.1, 0.7),
    "pMF-L/16": FDRecipe(7.0, 0.2, 0.7),
    "pMF-H/16": FDRecipe(7.0, 0.2, 0.6),
    "pMF-B/32": FDRecipe(6.5, 0.1, 0.7),
    "pMF-L/32": FDRecipe(7.5, 0.2, 0.6),
    "pMF-H/32": FDRecipe(5.5, 0.1, 0.6),
}
STEPS_PER_EPOCH = 1250  # their epochs are 1,250 steps of batch 1024


def recipe_fd_imagenet(arch: str) -> dict:
    """The ``TrainConfig`` fields of an FD-loss ImageNet recipe (unmeasured here): from the released ``arch``
    (give ``--init``), batch 1024, 100 epochs of 1250 steps with 5 of warm-up, AdamW 1e-6 (betas 0.9, 0.95)
    cosine to 0, EMA half-lives 250 to 2000 kimg, the Inception representation with moving moments at beta
    0.999 filled from 50,000 images."""
    row = FD_RECIPES[arch]
    guidance = dict(omega=row.omega, t_min=row.t_min, t_max=row.t_max)
    return dict(
        arch=arch, data=imagenet_data(arch),
        batch_size=1024, steps=100 * STEPS_PER_EPOCH, objective="fd",
        fd=FDConfig(repr=["inception"], ema_beta=0.999, fill=50000, **guidance),
        optim=dict(name="adamw", lr=1e-6, schedule="cosine", warmup_steps=5 * STEPS_PER_EPOCH),
        ema=dict(halflives_kimg=[250, 500, 1000, 2000]), sample=dict(every=5000, count=64, **guidance),
        out=f"runs/fd-{arch.replace('/', '-')}", log_every=100, ckpt_every=5000, precision="bf16", num_workers=8)


def recipe_fd() -> dict:
    """The ``TrainConfig`` fields of the CPU example (docs/posttraining.md): the ``pmf demo`` model post-trained
    in the offline classifier's representation, Adam 1e-5 at batch 128, moving moments at beta 0.99, 300
    steps."""
    return dict(
        arch="pMF-MNIST/7", data="mnist-5k", batch_size=128, steps=300, objective="fd", fd=FDConfig(),
        optim=dict(name="adamw", lr=1e-5, betas=(0.9, 0.999)), ema=dict(halflives_kimg=[], decays=[]),
        sample=dict(every=100, count=100), out="runs/fd", log_every=10, ckpt_every=100, keep_last=2, device="cpu")
