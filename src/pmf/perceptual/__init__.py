"""Perceptual losses of pMF (spec 3.8): LPIPS-VGG and ConvNeXt-V2 features on shared random crops.

Importing this package needs only torch; timm (ConvNeXt) and the lpips wheel (LPIPS linear layers) are
imported when a loss is built: ``pip install 'pixel-meanflow[perceptual]'``."""

from .config import CONVNEXT_V2_BASE, PerceptualConfig
from .crop import crop_resize, paired_random_resized_crop, sample_crop_boxes
from .loss import ConvNeXtFeatures, PerceptualLoss, build_perceptual
from .lpips_vgg import LPIPSVGG, lpips_state_dict

__all__ = ["CONVNEXT_V2_BASE", "ConvNeXtFeatures", "LPIPSVGG", "PerceptualConfig", "PerceptualLoss",
           "build_perceptual", "crop_resize", "lpips_state_dict", "paired_random_resized_crop",
           "sample_crop_boxes"]
