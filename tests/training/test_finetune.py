"""pmf.training.finetune: adapting a state dict to another class table, image size, channel count or missing v-head."""

import pytest
import torch
import torch.nn.functional as F

from pmf.errors import PMFError
from pmf.model_configs import model_config
from pmf.nn.model import PMFDiT, u_head_only
from pmf.training.config import parse_class_map
from pmf.training.finetune import (
    TABLE,
    adapt_class_table,
    adapt_input_conv,
    adapt_output_rows,
    adapt_state_dict,
    check_architecture,
    class_rows,
    resample_pos_embed,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed(config, seed=0) -> PMFDiT:
    """A model of ``config`` whose zero-initialised gates and output layers are perturbed."""
    torch.manual_seed(seed)
    model = PMFDiT(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_class_table_same_count_is_kept():
    pairs, note = class_rows(None, ["a", "b", "c"], 3, 3)
    assert pairs == {0: 0, 1: 1, 2: 2} and "kept" in note
    src, fresh = torch.randn(4, 5), torch.randn(4, 5)
    assert torch.equal(adapt_class_table(src, fresh, pairs), src)


def test_class_table_other_count_is_fresh_with_the_null_row_kept():
    pairs, note = class_rows(None, ["a", "b"], 10, 2)
    assert pairs == {} and "10 -> 2" in note and "2 rows fresh" in note and "null row kept" in note
    src, fresh = torch.randn(11, 5), torch.randn(3, 5)
    out = adapt_class_table(src, fresh, pairs)
    assert torch.equal(out[:2], fresh[:2]) and torch.equal(out[2], src[10])


def test_class_table_matching_names_and_class_map_keep_their_rows():
    src, fresh = torch.randn(5, 3), torch.randn(4, 3)
    pairs, note = class_rows(["cat", "dog", "owl", "eel"], ["eel", "fox", "cat"], 4, 3)
    assert pairs == {0: 3, 2: 0} and "2 rows kept by matching names" in note and "1 rows fresh" in note
    out = adapt_class_table(src, fresh, pairs)
    assert torch.equal(out[0], src[3]) and torch.equal(out[1], fresh[1]) and torch.equal(out[2], src[0])
    assert torch.equal(out[3], src[4])
    pairs, note = class_rows(["cat", "dog"], ["x", "y", "z"], 2, 3, parse_class_map("z=dog, x=0"))
    assert pairs == {2: 1, 0: 0} and "--class-map" in note
    with pytest.raises(PMFError, match="'wolf' is not a class of the checkpoint"):
        class_rows(["cat", "dog"], ["x"], 2, 1, {"x": "wolf"})
    with pytest.raises(PMFError, match="NEW=OLD"):
        parse_class_map("x:y")


def test_pos_embed_resampling_keeps_prefix_and_is_the_identity_at_the_same_size():
    pos = torch.randn(1, 3 + 16, 8)
    assert torch.equal(resample_pos_embed(pos, 3, 4), pos)
    up = resample_pos_embed(pos, 3, 6)
    assert up.shape == (1, 3 + 36, 8) and torch.equal(up[:, :3], pos[:, :3])
    # bicubic weights sum to one: a constant grid stays constant; a 4x4 grid at 4 equals plain interpolation
    const = torch.cat([pos[:, :3], torch.full((1, 16, 8), 0.7)], 1)
    assert torch.allclose(resample_pos_embed(const, 3, 7)[:, 3:], torch.tensor(0.7), atol=1e-6)
    img = pos[:, 3:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    same = F.interpolate(img, size=(4, 4), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(same, img, atol=1e-6)


def test_input_conv_adaptation_follows_the_adapt_input_conv_convention():
    w = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    gray = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(F.conv2d(gray, adapt_input_conv(w, 1), stride=4), F.conv2d(gray.expand(-1, 3, -1, -1), w,
                                                                                    stride=4))
    w1 = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    assert torch.allclose(F.conv2d(gray.expand(-1, 3, -1, -1), adapt_input_conv(w1, 3), stride=4),
                          F.conv2d(gray, w1, stride=4))
    rows = torch.arange(12.0).reshape(4 * 3, 1)  # (p*p=4, C=3) rows, channel fastest
    assert torch.equal(adapt_output_rows(rows, 3, 1)[:, 0], torch.tensor([1.0, 4.0, 7.0, 10.0]))
    assert torch.equal(adapt_output_rows(adapt_output_rows(rows, 3, 1), 1, 3)[:3, 0], torch.ones(3))


def test_an_rgb_model_adapted_to_gray_predicts_the_mean_of_its_rgb_prediction():
    rgb_cfg = model_config("pMF-Tiny/4", input_size=8, depth=2, aux_head_depth=1)
    gray_cfg = model_config("pMF-Tiny/4", input_size=8, depth=2, aux_head_depth=1, in_channels=1)
    rgb = perturbed(rgb_cfg).double()
    state, notes = adapt_state_dict(rgb.state_dict(), rgb_cfg, PMFDiT(gray_cfg).state_dict(), gray_cfg)
    gray = PMFDiT(gray_cfg).double().eval()
    gray.load_state_dict(state)
    assert any("channels 3 -> 1" in n for n in notes)
    z = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 3, 10])
    x_rgb, v_rgb, _ = rgb(z.expand(-1, 3, -1, -1), 0.5, 2.0, 0.1, 0.8, y)
    x_gray, v_gray, _ = gray(z, 0.5, 2.0, 0.1, 0.8, y)
    assert torch.allclose(x_gray, x_rgb.mean(1, keepdim=True), atol=1e-10)
    assert torch.allclose(v_gray, v_rgb.mean(1, keepdim=True), atol=1e-10)


def test_missing_v_head_is_copied_from_the_u_head_or_fresh():
    cfg = model_config("pMF-Tiny/4", input_size=8, depth=2, aux_head_depth=1)
    source = u_head_only(perturbed(cfg))
    fresh = PMFDiT(cfg).state_dict()
    copied, notes = adapt_state_dict(source.state_dict(), source.config, fresh, cfg, v_head="copy")
    assert "copied from the u-head" in notes[-1]
    assert torch.equal(copied["v_heads.0.mlp.w1.weight"], copied["u_heads.0.mlp.w1.weight"])
    assert torch.equal(copied["v_final_layer.linear.weight"], copied["u_final_layer.linear.weight"])
    new, _ = adapt_state_dict(source.state_dict(), source.config, fresh, cfg, v_head="fresh")
    assert torch.equal(new["v_heads.0.mlp.w1.weight"], fresh["v_heads.0.mlp.w1.weight"])
    assert set(new) == set(fresh) and torch.equal(new[TABLE], source.state_dict()[TABLE])


def test_another_width_or_patch_size_is_refused_in_one_line():
    a = model_config("pMF-Tiny/4")
    with pytest.raises(PMFError, match="hidden_size 64 vs 128") as err:
        check_architecture(a, model_config("pMF-MNIST/7"))
    assert "patch_size 4 vs 7" in str(err.value) and "\n" not in str(err.value)
    check_architecture(a, model_config("pMF-Tiny/4", input_size=16, in_channels=1, num_classes=3))
