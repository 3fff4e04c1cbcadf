"""The perceptual loss's crop, as the release does it: its box draw (one draw per sample, no retries) and its
``jax.image.scale_and_translate`` cubic antialiased resampling of the whole image (tests/fixtures/official,
``crop_resample.npz``), checked against the fixture, a float64 statement of the rule, PyTorch's own
antialiased bicubic where the two must agree, and finite differences."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pmf.errors import PMFError
from pmf.perceptual import crop_resize, paired_random_resized_crop, sample_crop_boxes

pytestmark = pytest.mark.usefixtures("one_thread")


def keys(x: np.ndarray) -> np.ndarray:
    """Keys' cubic kernel, a = -0.5, written from its definition (piecewise cubic in |x|)."""
    x = np.abs(x)
    return np.where(x < 1, 1.5 * x ** 3 - 2.5 * x ** 2 + 1,
                    np.where(x < 2, -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2, 0.0))


def rule_matrix(start: int, length: int, n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float64 weights of the release's resampling of [start, start + length) on one axis:
    output o samples input coordinate (o + 0.5) * length / n_out + start - 0.5 (pixel centres at i + 0.5),
    kernel widened by max(length / n_out, 1), taps over the WHOLE axis, rows normalised to sum 1."""
    step = length / n_out
    sample = (np.arange(n_out) + 0.5) * step + start - 0.5
    w = keys((sample[:, None] - np.arange(n_in)[None, :]) / max(step, 1.0))
    return w / w.sum(axis=1, keepdims=True)


def rule_crop(img: np.ndarray, box, size: int) -> np.ndarray:
    """[C, H, W] -> [C, size, size] by the float64 rule."""
    top, left, h, w = box
    ry, rx = rule_matrix(top, h, img.shape[1], size), rule_matrix(left, w, img.shape[2], size)
    return np.matmul(np.matmul(ry, img), rx.T)


# ---- the release's resampling --------------------------------------------------------------------------------

def test_crops_equal_the_release_fixture_on_every_case(fixtures_dir):
    data = np.load(fixtures_dir / "crop_resample.npz")
    cases = sorted({k.split("/")[0] for k in data.files if k.startswith("case")})
    assert len(cases) == 7
    for case in cases:
        index, top, left, h, w, size = data[f"{case}/box"].tolist()
        img = torch.from_numpy(data[str(data[f"{case}/image"])][index:index + 1])  # [1, 3, H, W]
        ref = torch.from_numpy(data[f"{case}/crop"])
        for dtype in (torch.float32, torch.float64):
            out = crop_resize(img.to(dtype), torch.tensor([[top, left, h, w]]), size)[0]
            err = (out.double() - ref.double()).abs().max().item()
            assert err <= 1e-4, (case, dtype, err)
        # the box-cut resampling (taps stopped at the box's edges) is measurably not what the release does
        cut = F.interpolate(img[:, :, top:top + h, left:left + w].double(), size=(size, size), mode="bicubic",
                            antialias=True, align_corners=False)[0]
        if (top, left, h, w) != (0, 0, img.shape[2], img.shape[3]):
            assert (cut - ref.double()).abs().max() > 1e-3, case


@pytest.mark.parametrize("H,W,size", [(64, 64, 224), (37, 53, 32), (96, 80, 20), (512, 512, 224)])
def test_crops_follow_the_rule_for_other_sizes_and_boxes(H, W, size):
    g = torch.Generator().manual_seed(H + W + size)
    x = torch.rand(4, 2, H, W, generator=g, dtype=torch.float64) * 2 - 1
    boxes = sample_crop_boxes(4, H, W, generator=g)
    boxes[0] = torch.tensor([H - 3, 0, 3, W])  # a thin strip on the bottom border
    boxes[1] = torch.tensor([1, W - 2, H - 1, 1])  # one column, against the right border
    out = crop_resize(x, boxes, size)
    assert out.shape == (4, 2, size, size)
    for b in range(4):
        ref = rule_crop(x[b].numpy(), boxes[b].tolist(), size)
        err = np.abs(out[b].numpy() - ref).max()
        assert err <= 1e-4, (b, boxes[b].tolist(), err)


def test_a_whole_image_box_equals_pytorch_antialiased_bicubic():
    """With the box on the whole image there is nothing outside it: the release's resampling is then
    PyTorch's antialiased bicubic (same Keys kernel, same widening, taps cut at the image's borders)."""
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    for size in (24, 40, 100):
        out = crop_resize(x, torch.tensor([[0, 0, 40, 56]] * 2), size)
        ref = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)  # float32 weights


def test_pixels_outside_the_box_enter_only_near_its_edges():
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    box = torch.tensor([[20, 16, 24, 30]])  # strictly inside: 20..43 x 16..45
    out = crop_resize(x, box, 48)  # upsampling, kernel radius 2 input pixels
    # output row o samples input row 0.5 o + 19.75: rows 0..2 are within 2 pixels of row 19, above the box
    changed = x.clone()
    changed[..., 19, :] += 1.0
    diff = (crop_resize(changed, box, 48) - out).abs()[0, 0]
    assert diff[:3].min() > 1e-3 and diff[3:].max() == 0
    # the last output column samples input column 45.19: column 47 (1.81 away) enters, column 48 does not
    for col, reached in ((47, True), (48, False)):
        changed = x.clone()
        changed[..., col] += 1.0
        diff = (crop_resize(changed, box, 48) - out).abs()[0, 0]
        assert (diff[:, -1].min() > 1e-4) == reached and diff[:, :-1].max() == 0


def test_crop_resize_rejects_bad_boxes():
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(PMFError, match="boxes"):
        crop_resize(x, torch.tensor([[0, 0, 4, 4]]), 8)
    with pytest.raises(PMFError, match="h, w >= 1"):
        crop_resize(x, torch.tensor([[0, 0, 4, 4], [0, 0, 0, 4]]), 8)
    with pytest.raises(PMFError, match="equal shapes"):
        paired_random_resized_crop(x, x[:, :1], 8)


def test_crop_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(2, 2, 9, 11, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    boxes = torch.tensor([[1, 2, 6, 5], [0, 0, 9, 11]])
    assert torch.autograd.gradcheck(lambda v: crop_resize(v, boxes, 7), (x,), eps=1e-6, atol=1e-7)
    # and it is the transpose of the rule's linear map: d<G, Ry X Rx^T>/dX = Ry^T G Rx
    G = torch.rand(2, 2, 7, 7, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((crop_resize(x, boxes, 7) * G).sum(), x)
    for b, box in enumerate(boxes.tolist()):
        ry, rx = rule_matrix(box[0], box[2], 9, 7), rule_matrix(box[1], box[3], 11, 7)
        ref = np.einsum("sh,cst,tw->chw", ry, G[b].numpy(), rx)
        assert np.abs(grad[b].numpy() - ref).max() < 1e-5  # float32 weights


# ---- the release's box draw ----------------------------------------------------------------------------------

def rule_boxes(u: np.ndarray, H: int, W: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> list:
    """The release's draw, sample by sample, from four uniforms per sample (area, log-aspect, top, left)."""
    out = []
    for ua, ur, ut, ul in u:
        area = H * W * (scale[0] + (scale[1] - scale[0]) * ua)
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * ur)
        w = min(max(round(math.sqrt(area * aspect)), 1), W)  # round: half to even, as jnp.round
        h = min(max(round(math.sqrt(area / aspect)), 1), H)
        top, left = math.floor(ut * (H - h + 1)), math.floor(ul * (W - w + 1))  # randint(0, H - h) inclusive
        out.append([top, left, h, w])
    return out


@pytest.mark.parametrize("H,W,scale", [(64, 64, (0.08, 1.0)), (30, 50, (0.08, 1.0)), (7, 5, (0.5, 1.0)),
                                       (256, 256, (1.0, 1.0))])
def test_box_draw_is_the_release_formula_with_one_draw_per_sample(H, W, scale):
    B = 500
    boxes = sample_crop_boxes(B, H, W, scale=scale, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    u = torch.stack([torch.rand(B, generator=g, dtype=torch.float64) for _ in range(4)], dim=1).numpy()
    assert boxes.tolist() == rule_boxes(u, H, W, scale)
    # exactly 4 uniforms per sample were consumed: the generators are still in step
    g2 = torch.Generator().manual_seed(5)
    sample_crop_boxes(B, H, W, scale=scale, generator=g2)
    assert torch.equal(torch.rand(3, generator=g2), torch.rand(3, generator=g))


def test_box_draw_bounds_clipping_and_inclusive_offsets():
    H = W = 12
    boxes = sample_crop_boxes(20000, H, W, generator=torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert (h >= 1).all() and (w >= 1).all() and (h <= H).all() and (w <= W).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    # no retries: sides that overflow are clipped, so full-width boxes with a shorter height occur
    assert ((w == W) & (h < H)).any() and ((h == H) & (w < W)).any()
    # randint(0, H - h) is inclusive at both ends: every offset 0..H-h occurs, for every height that occurs
    for size in h.unique().tolist():
        seen = set(top[h == size].tolist())
        if (h == size).sum() > 400:
            assert seen == set(range(H - size + 1)), size
    # at full height the only offset is 0
    assert (top[h == H] == 0).all()
    # a tiny image clips the sides up to 1 instead of rejecting the draw
    tiny = sample_crop_boxes(200, 2, 2, scale=(0.08, 0.08), generator=torch.Generator().manual_seed(1))
    assert (tiny[:, 2:] == 1).all() and set(tiny[:, 0].tolist()) == {0, 1}


def test_box_draw_distributions_follow_the_area_and_aspect_ranges():
    H = W = 2000  # rounding to whole pixels is negligible at this size
    scale = (0.08, 1.0)
    boxes = sample_crop_boxes(40000, H, W, scale=(0.08, 0.6), generator=torch.Generator().manual_seed(3))
    _, _, h, w = boxes.double().T
    area, log_aspect = h * w / (H * W), torch.log(w / h)  # no clipping below 0.6 of the area
    assert abs(area.min() - 0.08) < 2e-3 and abs(area.max() - 0.6) < 2e-3
    assert abs(area.mean() - 0.34) < 5e-3 and abs(area.std() - 0.52 / math.sqrt(12)) < 5e-3  # U(0.08, 0.6)
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    assert abs(log_aspect.min() - lo) < 2e-3 and abs(log_aspect.max() - hi) < 2e-3
    assert abs(log_aspect.mean()) < 3e-3 and abs(log_aspect.std() - (hi - lo) / math.sqrt(12)) < 3e-3
    boxes = sample_crop_boxes(40000, H, W, scale=scale, generator=torch.Generator().manual_seed(4))
    top, _, h, _ = boxes.double().T
    rel = ((top + 0.5) / (H - h + 1))[H - h >= 100]  # randint(0, H - h) over a wide range: ~uniform on (0, 1)
    assert rel.numel() > 30000 and abs(rel.mean() - 0.5) < 5e-3 and abs(rel.std() - 1 / math.sqrt(12)) < 5e-3


def test_crop_runs_in_float32_under_a_bf16_autocast():
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(6)) * 2 - 1
    boxes = torch.tensor([[3, 4, 30, 40], [0, 0, 48, 48]])
    ref = crop_resize(x, boxes, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crop_resize(x, boxes, 32)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
