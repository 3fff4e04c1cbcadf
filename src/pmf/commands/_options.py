"""The typed options of ``pmf sample``, ``pmf eval``, ``pmf serve``, ``pmf export`` and ``pmf export-generator``.
Each field is one flag (``_config_flags.add_option_flags`` spells it, shows its default and its smallest value);
each dataclass checks its ranges on construction (``check_ranges``), so a bad value is one line that names the
flag. The flags of the shared concepts (``--checkpoint``, ``--out``, ``--omega`` ...) come from ``_vocabulary``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..vocabulary import Precision
from ._config_flags import check_ranges, option, options_from_args
from ._vocabulary import seed_value

BATCH_HELP = "images per forward pass (results do not depend on it)"
SEED_HELP = "image i uses its own generator from (seed, i)"
STEPS_HELP = "sampling steps"


class _Options:
    def __post_init__(self) -> None:
        check_ranges(self)

    @classmethod
    def from_args(cls, args):
        return options_from_args(cls, args)


@dataclass(frozen=True)
class SpeedOptions(_Options):
    """Precision and compilation of the sampler (``pmf sample``, ``pmf eval``)."""

    precision: Precision = option("fp32", "fp32, or bf16 autocast (faster on GPUs and CPUs with AMX; images "
                                  "differ slightly)")
    compile: bool = option(False, "torch.compile the network with frozen weights, one graph per batch size (pays "
                           "off for many images: compiling takes from seconds to minutes)")
    cuda_graphs: bool = option(False, "with --compile on a GPU: replay CUDA graphs")


@dataclass(frozen=True)
class SampleOptions(SpeedOptions):
    classes: str | None = option(None, "classes to sample: indices, names or ranges, e.g. '0-9', '1,207,360', "
                                 "'cat,dog'; a class's name wins over its number, and a model whose class names "
                                 "are numbers takes numbers only as names (docs/serve.md, Classes)",
                                 none="all classes of a model with <= 100 classes, else 8 random ones")
    per_class: int | None = option(None, "images per class", none="8", min=1)
    num_images: int | None = option(None, "images in all instead of --per-class: the classes take turns (the "
                                    "first ones get one more when the count does not divide evenly)",
                                    old=("--num-samples",), none="off: --per-class", min=1)
    steps: int | None = option(None, STEPS_HELP, none="the checkpoint's setting, 1: one forward pass", min=1)
    seed: int = option(0, SEED_HELP, parse=seed_value)
    batch_size: int = option(64, BATCH_HELP, min=1)
    no_png: bool = option(False, "write only grid.png and samples.npz")


@dataclass(frozen=True)
class EvalOptions(SpeedOptions):
    num_images: int | None = option(None, "images per evaluation; image i has class i % num_classes. With "
                                    "--images: the first N images", old=("--num-samples",),
                                    none="50000 for FID, 1000 offline; with --images all", min=2)
    fast: int | None = option(None, "sweep with this many images per setting, then evaluate the best setting "
                              "with --num-images", none="off: each setting with --num-images", min=2)
    steps: int | None = option(None, STEPS_HELP, none="the checkpoint's setting, 1: one forward pass", min=1)
    seed: int = option(0, SEED_HELP, parse=seed_value)
    batch_size: int = option(64, BATCH_HELP, min=1)
    save_png: bool = option(False, "keep the final evaluation's images as PNGs")
    save_npz: bool = option(False, "keep them as samples.npz (gathered on rank 0)")


@dataclass(frozen=True)
class ServeOptions(_Options):
    precision: Precision = option("fp32", "fp32, or bf16 autocast (images then differ slightly from fp32 ones)")
    compile: bool = option(False, "torch.compile the network with frozen weights; batches are padded to powers "
                           "of two so at most log2(--max-batch)+1 graphs compile")
    host: str = option("127.0.0.1", "address to bind; any other than loopback needs --token")
    port: int = option(8000, "port to listen on", min=0, max=65535)
    max_batch: int = option(64, "most images in one forward pass (1: no batching)", min=1)
    max_wait_ms: float = option(5.0, "how long the first queued image waits for others to share its forward "
                                "pass, in milliseconds", min=0)
    max_images: int = option(64, "most images in one request", min=1)
    max_steps: int = option(4, "most sampling steps a request may ask for", min=1)
    max_queue: int = option(4096, "most images waiting; more get 503 and Retry-After", min=1)
    threads: int | None = option(None, "torch CPU threads (and onnxruntime's for an ONNX file)", none="torch's",
                                 min=1)
    access_log: bool = option(False, "log every request")


@dataclass(frozen=True)
class ExportOptions(_Options):
    steps: int | None = option(None, "--format onnx: sampling steps of the graph",
                               none="the checkpoint's setting, 1", min=1)
    quantize: Literal["int8"] | None = option(
        None, "--format onnx: int8 weights in every matrix product (onnxruntime's dynamic quantisation; about a "
        "quarter of the size, faster on some CPUs: docs/deploy.md); the export prints, and the file records, how "
        "many uint8 levels it moves the images from the fp32 file", none="fp32")


@dataclass(frozen=True)
class GeneratorExportOptions(_Options):
    static_batch: int | None = option(None, "trace for this batch size only", none="any batch size", min=1)
