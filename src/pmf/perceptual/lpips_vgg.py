"""LPIPS with the VGG16 trunk (Zhang et al. 2018, version 0.1), in plain PyTorch.

Same computation as the ``lpips`` package: scale the [-1, 1] input by fixed per-channel statistics, take
the VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, normalise each feature vector
to unit length, square the differences, weight channels with the learned non-negative 1x1 "lin" layers,
average over space and sum over layers. The trunk's layer indices follow torchvision's ``vgg16().features``
so torchvision and ``lpips`` state dicts load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

# (output channels or "M" for 2x2 max-pool) of vgg16().features up to relu5_3 (indices 0..29).
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # features indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _vgg16_trunk() -> nn.Sequential:
    layers, c_in = [], 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
            c_in = v
    return nn.Sequential(*layers)


class LPIPSVGG(nn.Module):
    """d(a, b) [B] for images a, b [B, 3, H, W] in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_trunk()
        self.lins = nn.ParameterList([nn.Parameter(torch.zeros(c)) for c in _CHANNELS])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised activations of x [B, 3, H, W] in [-1, 1]."""
        h = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def distance(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        """[B] from the taps of both images (lets a caller compute the clean image's taps without grad)."""
        total = 0
        for lin, a, b in zip(self.lins, fa, fb):
            total = total + torch.einsum("bchw,c->b", (a - b).pow(2), lin.to(a.dtype)) / (a.shape[2] * a.shape[3])
        return total

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(self.taps(a), self.taps(b))


def lpips_state_dict(sd: dict) -> tuple[dict, bool]:
    """Our state dict from a torchvision ``vgg16`` state dict (``features.N.*``) or an ``lpips.LPIPS``
    one (``net.sliceK.N.*``, ``linK.model.1.weight``). Returns (state dict, whether it held the lin layers)."""
    out: dict = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "features" and len(parts) == 3 and int(parts[1]) < len(_vgg16_trunk()):
            out[key] = value
        elif parts[0] == "net" and len(parts) == 4 and parts[1].startswith("slice"):
            out[f"features.{parts[2]}.{parts[3]}"] = value
        elif parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[-1] == "weight":
            out[f"lins.{int(parts[0][3:])}"] = value.reshape(-1)
    has_lins = all(f"lins.{i}" in out for i in range(len(_CHANNELS)))
    return out, has_lins
