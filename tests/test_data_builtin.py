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
