"""Fixtures of the perceptual tests: the lpips package on a random VGG16 trunk, and a loss whose LPIPS carries
that trunk."""

import warnings

import pytest
import torch

from helpers import perceptual_loss as build
from pmf.perceptual import lpips_state_dict


@pytest.fixture(scope="module")
def lpips_ref():
    """The lpips package on a random VGG16 trunk (its calibrated linear layers come from its wheel)."""
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()


@pytest.fixture(scope="module")
def loss_fn(lpips_ref):
    """Both terms; LPIPS carries the package's random trunk; lambda 1 and norm_p 0 make the term the raw sum."""
    fn = build(lpips_lambda=1.0, convnext_lambda=1.0, norm_p=0.0, max_t=0.8)
    sd, has_lins = lpips_state_dict(lpips_ref.state_dict())
    assert has_lins
    fn.lpips.load_state_dict(sd)
    return fn
