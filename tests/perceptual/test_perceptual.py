"""Perceptual terms (spec 3.8): paired crops, threshold mask, LPIPS parity with the lpips package, frozen
networks and the end-to-end pMF loss. Networks are random: small crops (32-64 px) and ConvNeXt-V2-Atto keep this
file fast; the Base model's wiring is a slow test. The configuration and the weight files:
test_perceptual_config.py."""

import pytest
import torch

import pmf
from helpers import ATTO
from helpers import PERCEPTUAL_CROP as CROP
from helpers import perceptual_loss as build
from helpers import random_images as images
from pmf.objective import pmf_loss, sample_draws
from pmf.perceptual import (
    LPIPSVGG,
    ConvNeXtFeatures,
    PerceptualConfig,
    PerceptualLoss,
    crop_resize,
    lpips_state_dict,
    paired_random_resized_crop,
    sample_crop_boxes,
)

PARITY_CROP = 64  # the LPIPS parity tests' crop

pytestmark = pytest.mark.usefixtures("one_thread")


def test_crop_is_shared_within_a_sample_and_differs_between_samples():
    one = images(1, 3, 32)
    a = one.repeat(6, 1, 1, 1)  # every sample the same image
    b = 0.5 * a + 0.25  # an affine change commutes with a resampling whose weights sum to 1
    ca, cb, boxes = paired_random_resized_crop(a, b, CROP, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cb, 0.5 * ca + 0.25, atol=1e-5, rtol=0)  # same box for a and b
    assert len({tuple(bx) for bx in boxes.tolist()}) == 6
    for i in range(1, 6):
        assert (ca[i] - ca[0]).abs().max() > 1e-2  # same image, different crops


def test_crop_boxes_follow_the_scale_and_ratio_ranges_and_the_generator():
    boxes = sample_crop_boxes(4000, 64, 64, generator=torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
    area = (h * w).double() / 64 ** 2
    assert area.min() > 0.06 and area.max() <= 1.0 and area.mean() < 0.7  # (0.08, 1) up to integer rounding
    ratio = w.double() / h.double()
    assert ratio.min() > 0.65 and ratio.max() < 1.5
    again = sample_crop_boxes(4000, 64, 64, generator=torch.Generator().manual_seed(0))
    other = sample_crop_boxes(4000, 64, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(boxes, again) and not torch.equal(boxes, other)


def test_crop_is_differentiable_wrt_the_prediction():
    x = images(2, 1, 28).requires_grad_()
    out, _, _ = paired_random_resized_crop(x, x.detach(), CROP, generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_lpips_network_reproduces_the_lpips_package(lpips_ref):
    net = LPIPSVGG()
    net.load_state_dict(lpips_state_dict(lpips_ref.state_dict())[0])
    a, b = images(3, 3, PARITY_CROP, seed=1), images(3, 3, PARITY_CROP, seed=2)
    with torch.no_grad():
        ours, ref = net(a, b), lpips_ref(a, b).flatten()
    assert ref.min() > 0
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("C", [3, 1])
def test_crop_and_mapping_wrapper_reproduces_lpips_on_the_same_crops(loss_fn, lpips_ref, C):
    x = images(3, C, 32, seed=3)
    x_pred = (x + 0.5 * images(3, C, 32, seed=4)).clamp(-1, 1)
    t = torch.zeros(3)
    cfg = PerceptualConfig(lpips=True, lpips_lambda=1.0, norm_p=0.0, crop_size=PARITY_CROP)
    fn = PerceptualLoss(cfg, loss_fn.lpips, None)
    term, _ = fn(x_pred, x, t, generator=torch.Generator().manual_seed(5))
    boxes = sample_crop_boxes(3, 32, 32, generator=torch.Generator().manual_seed(5))
    crops = [crop_resize(v, boxes, PARITY_CROP).expand(-1, 3, -1, -1) for v in (x_pred, x)]  # test_crop.py
    with torch.no_grad():
        ref = lpips_ref(crops[0], crops[1]).flatten()  # the package takes [-1, 1]
    torch.testing.assert_close(term.detach(), ref, atol=1e-5, rtol=1e-5)


def test_convnext_features_are_timm_pre_logits_of_the_raw_crops():
    """The release feeds its [-1, 1] crops to ConvNeXt as they are (no ImageNet mean/std, no resize)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model(ATTO, pretrained=False).eval()
    x = images(2, 3, CROP, seed=20)
    with torch.no_grad():
        ours = ConvNeXtFeatures(net)(x)
        ref = net.forward_head(net.forward_features(x), pre_logits=True)
        imagenet = (x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        normalised = net.forward_head(net.forward_features(imagenet / torch.tensor([0.229, 0.224, 0.225])
                                                           .view(1, 3, 1, 1)), pre_logits=True)
    assert ours.shape == (2, net.num_features)
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    assert (ours - normalised).abs().max() > 1e-2  # the old ImageNet-normalised input is measurably different


def test_convnext_term_is_the_squared_distance_of_features_of_the_shared_crops(loss_fn):
    cfg = PerceptualConfig(convnext=True, convnext_lambda=1.0, norm_p=0.0, crop_size=CROP)
    fn = PerceptualLoss(cfg, None, loss_fn.convnext)
    x, x_pred = images(3, 3, 40, seed=21), images(3, 3, 40, seed=22)
    term, _ = fn(x_pred, x, torch.zeros(3), generator=torch.Generator().manual_seed(7))
    boxes = sample_crop_boxes(3, 40, 40, generator=torch.Generator().manual_seed(7))
    net = loss_fn.convnext.net
    with torch.no_grad():
        fa, fb = (net.forward_head(net.forward_features(crop_resize(v, boxes, CROP)), pre_logits=True)
                  for v in (x_pred, x))
    torch.testing.assert_close(term.detach(), (fa - fb).pow(2).sum(dim=1), atol=1e-5, rtol=1e-5)


def test_threshold_masks_exactly_the_samples_at_or_above_max_t(loss_fn):
    x = images(6, 3, 32, seed=6)
    x_pred = images(6, 3, 32, seed=7).requires_grad_()
    t = torch.tensor([0.1, 0.8, 0.79, 0.95, 0.5, 1.0])
    term, logs = loss_fn(x_pred, x, t)
    masked = t >= 0.8
    assert (term[masked] == 0).all() and (term[~masked] > 0).all()
    term.sum().backward()
    grad_norm = x_pred.grad.abs().sum(dim=(1, 2, 3))
    assert (grad_norm[masked] == 0).all() and (grad_norm[~masked] > 0).all()
    assert set(logs) == {"loss_lpips", "loss_convnext"} and all(v.dim() == 0 for v in logs.values())


def test_each_term_has_its_own_threshold(loss_fn):
    """convnext_max_t / lpips_max_t override max_t for their term only (the H recipes gate ConvNeXt at 0.6)."""
    x = images(4, 3, 32, seed=23)
    x_pred = images(4, 3, 32, seed=24).requires_grad_()
    t = torch.tensor([0.1, 0.6, 0.7, 1.0])
    cfg = PerceptualConfig(lpips=True, convnext=True, crop_size=CROP, lpips_lambda=1.0, convnext_lambda=1.0,
                           norm_p=0.0, max_t=1.0, convnext_max_t=0.6)
    assert (cfg.threshold("lpips"), cfg.threshold("convnext")) == (1.0, 0.6)
    fn = PerceptualLoss(cfg, loss_fn.lpips, loss_fn.convnext)
    _, logs = fn(x_pred, x, t, generator=torch.Generator().manual_seed(0))
    a, b, _ = paired_random_resized_crop(x_pred, x, CROP, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = fn.distances(a, b)
    lpips_on, convnext_on = t < 1.0, t < 0.6  # [T, T, T, F] and [T, F, F, F]
    torch.testing.assert_close(logs["loss_lpips"], (d["lpips"] * lpips_on).mean(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logs["loss_convnext"], (d["convnext"] * convnext_on).mean(), atol=1e-6, rtol=1e-5)
    term, _ = fn(x_pred, x, t)
    term.sum().backward()
    grad_norm = x_pred.grad.abs().sum(dim=(1, 2, 3))
    assert (grad_norm[:3] > 0).all() and grad_norm[3] == 0
    swapped = PerceptualConfig(lpips=True, convnext=True, crop_size=CROP, max_t=0.5, lpips_max_t=0.65)
    _, logs = PerceptualLoss(swapped, loss_fn.lpips, loss_fn.convnext)(x_pred, x, t)
    assert logs["loss_lpips"] > 0 and logs["loss_convnext"] > 0
    assert "zeroed for t >= 0.65" in PerceptualLoss(swapped, loss_fn.lpips, loss_fn.convnext).describe()


def test_equal_inputs_give_zero_distances(loss_fn):
    for C in (1, 3):
        x = images(2, C, 32, seed=8)
        a = x.repeat(1, 3 // C, 1, 1) if C == 1 else x
        crops = crop_resize(a, sample_crop_boxes(2, 32, 32), CROP)
        d = loss_fn.distances(crops, crops.clone())
        assert set(d) == {"lpips", "convnext"}
        for value in d.values():
            assert value.abs().max() == 0
        term, logs = loss_fn(x, x.clone(), torch.zeros(2))
        assert term.abs().max() == 0 and all(v == 0 for v in logs.values())


def test_frozen_networks_get_no_gradients_and_live_outside_any_module(loss_fn):
    x = images(2, 3, 32, seed=9)
    x_pred = images(2, 3, 32, seed=10).requires_grad_()
    term, _ = loss_fn(x_pred, x, torch.tensor([0.2, 0.3]))
    term.sum().backward()
    assert x_pred.grad.abs().sum() > 0
    assert not isinstance(loss_fn, torch.nn.Module)  # nothing to register, save or average
    for net in (loss_fn.lpips, loss_fn.convnext):
        assert not net.training
        for p in net.parameters():
            assert not p.requires_grad and p.grad is None


def test_weighting_and_lambdas_follow_the_adaptive_rule(loss_fn):
    cfg = PerceptualConfig(lpips=True, convnext=True, crop_size=CROP, lpips_lambda=0.4, convnext_lambda=0.1,
                           norm_p=1.0, norm_eps=0.01)
    fn = PerceptualLoss(cfg, loss_fn.lpips, loss_fn.convnext)
    x, x_pred, t = images(2, 3, 32, seed=11), images(2, 3, 32, seed=12), torch.tensor([0.1, 0.2])
    term, _ = fn(x_pred, x, t, generator=torch.Generator().manual_seed(0))
    a, b, _ = paired_random_resized_crop(x_pred, x, CROP, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = fn.distances(a, b)
    expect = 0.4 * d["lpips"] / (d["lpips"] + 0.01) + 0.1 * d["convnext"] / (d["convnext"] + 0.01)
    torch.testing.assert_close(term.detach(), expect, atol=1e-6, rtol=1e-5)


def test_pmf_loss_end_to_end_with_perceptual_terms(loss_fn):
    torch.manual_seed(0)
    model = pmf.build_model("pMF-MNIST/7")
    with torch.no_grad():  # the zero-initialised output layers would make x_pred trivially 0
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.05)
    x = images(4, 1, 28, seed=13)
    y = torch.tensor([1, 2, 3, 4])
    draws = sample_draws(x, P_mean=-0.4, P_std=1.0, data_proportion=0.5, cfg_max=7.0, cfg_beta=1.0,
                         class_dropout_prob=0.1, noise_scale=1.0, generator=torch.Generator().manual_seed(0))
    draws.t[:2] = torch.tensor([0.3, 0.9])  # one sample on each side of max_t
    draws.r = torch.minimum(draws.r, draws.t)
    base = pmf_loss(model, x, y, draws, num_classes=10)
    out = pmf_loss(model, x, y, draws, num_classes=10, perceptual=loss_fn.manual_seed(3))
    term, _ = loss_fn.manual_seed(3)(out.x_pred, x, draws.t)
    torch.testing.assert_close(out.per_sample - base.per_sample, term, atol=1e-5, rtol=1e-5)
    assert set(out.logs) == {"loss_lpips", "loss_convnext"}
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for net in (loss_fn.lpips, loss_fn.convnext) for p in net.parameters())
    names = {id(p) for p in model.parameters()}
    assert not any(id(p) in names for p in loss_fn.lpips.parameters())


@pytest.mark.slow
def test_convnext_v2_base_wiring_at_224():
    fn = build(lpips=False, convnext_model="convnextv2_base.fcmae_ft_in22k_in1k", crop_size=224)
    x = images(1, 3, 32, seed=14)
    x_pred = images(1, 3, 32, seed=15).requires_grad_()
    feats = fn.convnext(torch.zeros(1, 3, 224, 224))
    assert feats.shape == (1, 1024)
    term, _ = fn(x_pred, x, torch.zeros(1))
    term.sum().backward()
    assert term.item() > 0 and x_pred.grad.abs().sum() > 0


@pytest.mark.gpu
def test_bf16_autocast_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    fn = build()
    x = images(4, 3, 32, seed=16).cuda()
    x_pred = images(4, 3, 32, seed=17).cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        term, logs = fn(x_pred, x, torch.tensor([0.1, 0.5, 0.9, 0.2], device="cuda"))
    term.sum().backward()
    assert term.dtype == torch.float32 and torch.isfinite(term).all() and term[2] == 0
    assert x_pred.grad.abs().sum() > 0
