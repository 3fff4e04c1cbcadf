"""The typed options of the commands that train or prepare data: ``pmf demo``, ``pmf toy``, ``pmf train``'s model
fit, ``pmf pack`` and ``pmf refstats``. As in ``_options``, each field is one flag (``add_option_flags``) and each
dataclass checks its ranges on construction, so a bad value is one line that names the flag, before anything is
read or written. Values a config checks itself (``pmf.toy.ToyConfig``'s sizes, the training config's fields)
keep their rule there."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PMFError
from ._config_flags import option
from ._options import _Options

THREADS_HELP = "torch CPU threads"


@dataclass(frozen=True)
class DemoOptions(_Options):
    steps: int = option(800, "training steps", min=1)
    omega: float = option(3.0, "guidance scale of the scored samples, recorded in the checkpoint as its sampling "
                          "setting")
    num_images: int = option(1000, "scored samples, balanced over classes (one per class at least)",
                             old=("--num-samples",), min=10)
    threads: int | None = option(None, f"{THREADS_HELP} (1 is faster on a machine busy with other work)",
                                 none="PyTorch's choice", min=1)
    no_score: bool = option(False, "skip the offline quality score")
    overwrite: bool = option(False, "start afresh in an --out that holds an earlier demo (deletes its checkpoints "
                             "and metrics)")


def _toy(name: str) -> str:
    """The shown default of a ``ToyConfig`` field (the config's own default, not written again here)."""
    from ..toy import ToyConfig

    value = getattr(ToyConfig(), name)
    return ",".join(map(str, value)) if isinstance(value, list) else f"{value:g}"


@dataclass(frozen=True)
class ToyOptions(_Options):
    """The flags of ``pmf toy``; the experiment's own fields (``to_config``) are checked by ``ToyConfig``."""

    dims: str | None = option(None, "comma-separated observation dimensions", none=_toy("dims_list"))
    quick: bool = option(False, "a small run of a few seconds (D = 2, 64)")
    steps: int | None = option(None, "training steps per model", none=_toy("steps"))
    batch_size: int | None = option(None, "training batch", none=_toy("batch_size"))
    lr: float | None = option(None, "learning rate", none=_toy("lr"))
    width: int | None = option(None, "hidden width of the MLP", none=_toy("width"))
    depth: int | None = option(None, "linear layers of the MLP", none=_toy("depth"))
    fm_fraction: float | None = option(None, "share of each batch with r = t", none=_toy("fm_fraction"))
    eval_samples: int | None = option(None, "one-step samples scored per model", none=_toy("eval_samples"))
    workers: int | None = option(None, "processes training (dim, prediction) pairs side by side; results do not "
                                 "depend on it", none="min(2, CPU cores); 1 for --quick", min=1)
    threads: int = option(1, f"{THREADS_HELP} per process (the matrices are small, so processes use cores better "
                          "than threads)", min=1)
    figure: str | None = option(None, "figure path", none="OUT/toy.png")
    no_plot: bool = option(False, "skip the figure")

    def to_config(self, seed: int, dims: list[int] | None):
        """The ``ToyConfig`` of the fields given (the quick one with --quick)."""
        from ..toy import ToyConfig, quick_config

        fields = ("steps", "batch_size", "lr", "width", "depth", "fm_fraction", "eval_samples")
        given = {k: getattr(self, k) for k in fields if getattr(self, k) is not None}
        given.update(seed=seed, **({"dims": dims} if dims is not None else {}))
        try:
            return quick_config(**given) if self.quick else ToyConfig(**given)
        except PMFError as err:  # ToyConfig's rule, said with the flag's name ("steps must be" -> "--steps must be")
            name, _, rest = str(err).partition(" ")
            if name in (*fields, "dims"):
                raise PMFError(f"--{name.replace('_', '-')} {rest}") from None
            raise


@dataclass(frozen=True)
class ModelFitOptions(_Options):
    """``pmf train``'s flags that fit the model to its data (``train.fit_model_to_data``)."""

    num_classes: int | None = option(None, "classes of the model", none="found in the data", min=1)
    channels: int | None = option(None, "image channels of the model", none="3 for RGB data, 1 for a folder of gray "
                                  "images, the preset's for other gray data, which is repeated to RGB for an RGB "
                                  "model", min=1)
    image_size: int | None = option(None, "image size of the model; images are center-cropped to it",
                                    none="the data's when all images have one size, else the preset's", min=1)


@dataclass(frozen=True)
class PackOptions(_Options):
    size: int = option(help="training resolution, e.g. 256", min=1)


@dataclass(frozen=True)
class RefstatsOptions(_Options):
    size: int = option(help="resolution the model generates (e.g. 256)", min=1)
    sample: int = option(10_000, "reference features kept for precision/recall (a fixed random subset; ADM's "
                         "reference batch size; precision/recall compare 3 nearest neighbours)", min=4)
    limit: int | None = option(None, "use only the first N images", none="all")
