"""``inception``: the FID network (torch-fidelity's port of the 2015 TensorFlow Inception-v3, pmf.evaluation.inception)
as a representation: 2048-d pool features, plus the 1008 unbiased logits (IS) and ADM's spatial features
(sFID) from the same pass.

torch-fidelity's own ``forward`` accepts only uint8 images, so no gradient reaches the images; this module
runs the same layers in the same order on float images (the FD loss backpropagates through them). On uint8
images it gives torch-fidelity's features up to float rounding (tested).

sFID (Nash et al. 2021, as ADM's evaluator computes it): the first 7 channels of the 17x17 output of the 1x1
branch of the fourth 17x17 block (TensorFlow ``mixed_6/conv``, torchvision's ``Mixed_6d.branch1x1``),
flattened to 2023 values. The order of the values differs from ADM's (channel-major here); the Frechet
distance does not depend on it."""

from __future__ import annotations

import torch

from .base import Representation, check_images, to_rgb

TRUNK = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
         "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
         "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")
SPATIAL_BLOCK, SPATIAL_CHANNELS = "Mixed_6d", 7


class InceptionRepresentation(Representation):
    """[B, C, H, H] in [-1, 1] -> [B, 2048]; ``forward_all`` adds ``logits`` [B, 1008] and ``spatial``
    [B, 2023]."""

    name = "inception"
    input_size = 299
    feature_dim = 2048

    def __init__(self, net: torch.nn.Module, weights: str):
        super().__init__()
        self.net, self.weights = net, weights
        self.freeze()

    def preprocessing(self) -> dict:
        return {"input_size": 299, "expected_range": [-1, 1],
                "normalisation": "u = (x + 1) * 127.5 (the uint8 scale), then (u - 128) / 128",
                "channels": "grey repeated to RGB",
                "resize": "TF1-compatible bilinear to 299x299 (torch-fidelity's interpolate_bilinear_2d_like_"
                          "tensorflow1x), whole image",
                "pooling": "global average of Mixed_7c (pool3, 2048)", "network": "inception-v3-compat",
                "weights_file": self.weights.rsplit("/", 1)[-1]}

    def _run(self, images: torch.Tensor, spatial: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = to_rgb(check_images(images, "Inception")).float()
        x = (x + 1) * 127.5  # the uint8 scale torch-fidelity reads
        x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)  # (B, 3, 299, 299)
        x = (x - 128) / 128
        side = None
        for name in TRUNK:
            layer = getattr(self.net, name)
            if spatial and name == SPATIAL_BLOCK:
                side = layer.branch1x1(x)[:, :SPATIAL_CHANNELS].flatten(1)  # (B, 7 * 17 * 17)
            x = layer(x)
        return torch.flatten(x, 1), side  # (B, 2048)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images, spatial=False)[0].float()

    def forward_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pool, side = self._run(images, spatial=True)
        logits = pool.mm(self.net.fc.weight.T)  # unbiased logits, as torch-fidelity's IS uses
        return {"features": pool.float(), "logits": logits.float(), "spatial": side.float()}


def inception(*, weights=None, device=None) -> InceptionRepresentation:
    """The Inception representation with the local weights (see pmf.evaluation.inception.find_weights for where)."""
    from ...errors import PMFError
    from ..inception import find_weights, load_inception

    try:
        path = find_weights(weights)
    except PMFError as err:  # the registry's errors are one line
        raise PMFError(" ".join(str(err).split())) from None
    return InceptionRepresentation(load_inception(path), str(path)).to(device or "cpu")
