"""Configuration of the perceptual terms (spec 3.8); validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PMFError
from ..model_configs import dataclass_from_dict, doc

CONVNEXT_V2_BASE = "convnextv2_base.fcmae_ft_in22k_in1k"  # ImageNet-22k fine-tuned, 224 px


def _check(cond: bool, name: str, value, want: str) -> None:
    if not cond:
        raise PMFError(f"perceptual.{name} must be {want}, got {value!r}")


@dataclass
class PerceptualConfig:
    """Switches, weights and thresholds of the LPIPS-VGG and ConvNeXt-V2 terms.

    A term is zeroed for samples with ``t >= threshold``: ``lpips_max_t`` / ``convnext_max_t`` when set,
    else the shared ``max_t`` (the release's ``perceptual_max_t``, whose default is 1.0).

    ``lpips_weights`` / ``convnext_weights``: local weight files (else $PMF_LPIPS_VGG_WEIGHTS /
    $PMF_CONVNEXT_WEIGHTS, else the torch-hub / Hugging Face caches, else a download when ``download``)."""

    lpips: bool = doc(False, "the LPIPS-VGG loss", flag="--lpips")
    convnext: bool = doc(False, "the ConvNeXt-V2 feature loss", flag="--convnext")
    lpips_lambda: float = doc(0.4, "weight of the LPIPS loss", flag="--lpips-lambda")
    convnext_lambda: float = doc(0.1, "weight of the ConvNeXt loss", flag="--convnext-lambda")
    # the release's perceptual_max_t
    max_t: float = doc(1.0, "perceptual losses only for t below this")
    lpips_max_t: float | None = doc(None, "the LPIPS term's own threshold", none="max_t")
    # set by the H recipes
    convnext_max_t: float | None = doc(None, "the ConvNeXt term's own threshold", none="max_t")
    norm_p: float = doc(1.0, "power of the perceptual terms' adaptive weight")
    norm_eps: float = doc(0.01, "epsilon of the perceptual terms' adaptive weight")
    crop_size: int = doc(224, "side of the paired random crops")
    crop_scale: tuple[float, float] = doc((0.08, 1.0), "area range of the paired random crops, e.g. 0.08,1")
    lpips_weights: str | None = doc(None, "local VGG16 (torchvision) or full LPIPS weight file",
                                    flag="--lpips-weights", none="$PMF_LPIPS_VGG_WEIGHTS, else the torch-hub cache")
    convnext_weights: str | None = doc(None, "local ConvNeXt-V2-Base weight file", flag="--convnext-weights",
                                       none="$PMF_CONVNEXT_WEIGHTS, else the Hugging Face cache")
    convnext_model: str = doc(CONVNEXT_V2_BASE, "a timm ConvNeXt model name")
    download: bool = doc(True, "fetch missing perceptual weights (--no-download: stop with a message naming the "
                         "files instead)", flag="--download")

    def __post_init__(self) -> None:
        for name in ("lpips", "convnext", "download"):
            _check(isinstance(getattr(self, name), bool), name, getattr(self, name), "True or False")
        for name in ("lpips_lambda", "convnext_lambda"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and value >= 0, name, value, "a number >= 0")
        _check(isinstance(self.max_t, (int, float)) and self.max_t > 0, "max_t", self.max_t, "a number > 0")
        for name in ("lpips_max_t", "convnext_max_t"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, (int, float)) and value > 0), name, value,
                   "None or a number > 0")
        _check(isinstance(self.norm_p, (int, float)) and self.norm_p >= 0, "norm_p", self.norm_p, ">= 0")
        _check(isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0, "norm_eps", self.norm_eps, "> 0")
        _check(isinstance(self.crop_size, int) and self.crop_size >= 32, "crop_size", self.crop_size,
               "an integer >= 32 (both networks downsample by up to 32)")
        scale = tuple(self.crop_scale) if isinstance(self.crop_scale, (list, tuple)) else None
        _check(scale is not None and len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "crop_scale",
               self.crop_scale, "a pair (lo, hi) with 0 < lo <= hi <= 1")
        self.crop_scale = scale
        for name in ("lpips_weights", "convnext_weights"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, str) and value != ""), name, value,
                   "None or a path to a local weight file")
        _check(isinstance(self.convnext_model, str) and self.convnext_model.startswith("convnext"),
               "convnext_model", self.convnext_model, "a timm ConvNeXt model name")

    @property
    def enabled(self) -> bool:
        return self.lpips or self.convnext

    def threshold(self, term: str) -> float:
        """The t threshold of ``term`` ("lpips" or "convnext"): its own field when set, else ``max_t``."""
        own = {"lpips": self.lpips_max_t, "convnext": self.convnext_max_t}[term]
        return float(self.max_t if own is None else own)

    @classmethod
    def from_dict(cls, data: dict) -> PerceptualConfig:
        return dataclass_from_dict(cls, data, "perceptual")
