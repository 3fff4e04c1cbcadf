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


def test_upsampling_a_builtin_set_is_bicubic_and_recorded():
    from PIL import Image

    small = load_builtin("mnist-5k", split="test")
    big = load_builtin("mnist-5k", size=112, split="test")
    assert big.images.shape == (500, 112, 112, 1)
    assert big.resized == "28x28 -> 112x112 by bicubic resize (PIL, per channel)"
    want = np.asarray(Image.fromarray(small.images[3, ..., 0]).resize((112, 112), Image.BICUBIC))
    assert np.array_equal(big.images[3, ..., 0], want)
    assert load_builtin("mnist-5k", size=32, split="test").resized == "28x28 -> 32x32 by centred zero pad"
    assert small.resized == "" and big.subset(np.arange(2)).resized == big.resized


def test_smaller_array_files_are_brought_to_the_model_size(tmp_path):
    from pmf.data import open_training_data
    from pmf.data.builtin import resize_to

    rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=rgb, labels=np.array([0, 1, 1]))
    data = open_training_data(str(tmp_path / "a.npz"), 24)
    assert data.images.shape == (3, 24, 24, 3) and data.resized == "8x8 -> 24x24 by bicubic resize (PIL, per channel)"
    # each channel resized as a gray image of its own
    assert np.array_equal(data.images[..., 1:2], resize_to(rgb[..., 1:2], 24))
    same = open_training_data(str(tmp_path / "a.npz"), 8)
    assert same.resized == "" and np.array_equal(same.images, rgb)
