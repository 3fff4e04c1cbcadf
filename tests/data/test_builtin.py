"""Built-in datasets read from registry packages (no network)."""

import numpy as np
import pytest

from pmf.data import load_builtin
from pmf.errors import PMFError


def test_mnist_5k_split_and_padding():
    train, test = load_builtin("mnist-5k", split="train"), load_builtin("mnist-5k", split="test")
    assert train.images.shape == (4500, 28, 28, 1) and test.images.shape == (500, 28, 28, 1)
    assert np.bincount(test.labels).tolist() == [50] * 10
    padded = load_builtin("mnist-5k", size=32, split="test")
    assert padded.images.shape == (500, 32, 32, 1)
    assert np.array_equal(padded.images[:, 2:30, 2:30], test.images) and padded.images[:, :2].max() == 0
    assert train.images.max() == 255 and train.images.dtype == np.uint8


def test_digits_upsampled():
    d = load_builtin("digits", size=16, split="all")
    assert d.images.shape == (1797, 16, 16, 1) and d.num_classes == 10


def test_unknown_builtin():
    with pytest.raises(PMFError, match="unknown built-in dataset 'cifar'"):
        load_builtin("cifar")


def test_adm_center_crop_and_rgb():
    from PIL import Image

    from pmf.data.transforms import adm_center_crop, to_rgb

    ramp = (np.arange(300) * 255 // 299).astype(np.uint8)
    im = Image.fromarray(np.tile(ramp[None, :, None], (1000, 1, 3)))  # 300 wide, 1000 tall
    out = adm_center_crop(im, 64)
    assert out.size == (64, 64)
    # halved twice (300x1000 -> 150x500 -> 75x250), then scaled to 64 wide: the columns span the whole ramp
    arr = np.asarray(out)
    assert arr[0, 0, 0] < 10 and arr[0, -1, 0] > 245 and arr.shape == (64, 64, 3)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(rgba)).min() == 255  # transparent -> white
    assert to_rgb(Image.new("L", (2, 2), 7)).mode == "RGB" and to_rgb(Image.new("CMYK", (2, 2))).mode == "RGB"
