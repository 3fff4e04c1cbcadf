"""pmfDiT: fixture parity, presets, attention paths, RoPE, input validation."""

import pytest
import torch

import pmf
from helpers import load_npz
from pmf.errors import PMFError
from pmf.nn.attention import apply_rope, attention_backend, rope_angles
from pmf.nn.release import release_rope_freqs

pytestmark = pytest.mark.usefixtures("one_thread")

RELEASED_COUNTS = {  # spec section 5: (inference u-head only, training with v-head)
    "pMF-B/16": (118_234_240, 175_474_304),
    "pMF-L/16": (410_320_768, 511_789_696),
    "pMF-H/16": (955_508_992, 1_113_904_640),
    "pMF-B/32": (120_300_928, 179_312_768),
    "pMF-L/32": (412_977_280, 516_807_808),
    "pMF-H/32": (959_050_240, 1_120_397_312),
}
NOISE_SCALES = {"pMF-B/16": 1.0, "pMF-L/16": 1.0, "pMF-H/16": 2.0, "pMF-B/32": 2.0, "pMF-L/32": 4.0, "pMF-H/32": 4.0}


@pytest.fixture(scope="module")
def io(fixtures_dir):
    return load_npz(fixtures_dir / "net_tiny_io.npz")


def test_fixture1_network_outputs(tiny_model, io):
    m = tiny_model.eval()
    args = (io["x"], io["h"], io["omega"], io["t_min"], io["t_max"], io["y"])
    with torch.no_grad():
        seq = m.embed(*args)
        trunk = m.trunk(*args)
        x_u, x_v = m(*args)
    clip = io["t"].clamp(0.05, 1).view(-1, 1, 1, 1)
    assert (seq - io["dbg_seq_in"]).abs().max() <= 1e-5
    assert (trunk - io["dbg_seq_after_shared"]).abs().max() <= 1e-5
    assert (x_u - (io["x"] - io["u"] * clip)).abs().max() <= 1e-5
    assert (x_v - (io["x"] - io["v"] * clip)).abs().max() <= 1e-5
    # the conditioning inputs matter: a different omega changes the output well above the tolerance
    with torch.no_grad():
        x_u2, _ = m(io["x"], io["h"], io["omega"] + 2, io["t_min"], io["t_max"], io["y"])
    assert (x_u2 - x_u).abs().max() > 1e-3


def test_math_and_sdpa_attention_agree(tiny_model, io):
    args = (io["x"], io["h"], io["omega"], io["t_min"], io["t_max"], io["y"])
    with torch.no_grad():
        a, _ = tiny_model(*args)
        with attention_backend("math"):
            b, _ = tiny_model(*args)
    assert (a - b).abs().max() <= 2e-6


def test_rope_matches_complex_rotation():
    torch.manual_seed(0)
    from pmf.config import ModelConfig

    cfg = ModelConfig(input_size=32, patch_size=4, hidden_size=64, num_heads=4)
    angles = rope_angles(cfg.grid_size, cfg.head_dim)
    freqs = release_rope_freqs(cfg)  # complex (T, hd/2)
    x = torch.randn(2, 4, cfg.num_patches, cfg.head_dim)
    ref = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * freqs).flatten(-2)
    out = apply_rope(x, angles.cos().float(), angles.sin().float())
    assert (out - ref).abs().max() <= 1e-5
    # row rotation on the first quarter-slots, column rotation on the rest: patch (0, 1) has zero row angle
    assert torch.all(angles[1, : cfg.head_dim // 4] == 0) and angles[1, cfg.head_dim // 4] == 1.0


def test_rope_buffer_matches_release_file(tiny_release_sd):
    cfg = pmf.model_config("pMF-Tiny/4")
    assert torch.allclose(release_rope_freqs(cfg), tiny_release_sd["rope_freqs"], atol=1e-6)


@pytest.mark.parametrize("arch", list(RELEASED_COUNTS))
def test_released_presets_parameter_counts(arch):
    with torch.device("meta"):
        inference = pmf.count_parameters(pmf.build_model(arch, v_head=False))
        training = pmf.count_parameters(pmf.build_model(arch))
    assert (inference, training) == RELEASED_COUNTS[arch]
    assert pmf.model_config(arch).noise_scale == NOISE_SCALES[arch]


def test_overrides_build_grayscale_model_and_forward():
    m = pmf.build_model("pMF-Tiny/4", input_size=28, patch_size=7, in_channels=1, num_classes=5, hidden_size=32,
                        depth=3, num_heads=2, aux_head_depth=1, with_v_head=False)
    z = torch.randn(2, 1, 28, 28)
    x_u, x_v = m(z, torch.ones(2), 2.0, 0.1, 0.9, torch.tensor([0, 5]))
    assert x_u.shape == z.shape and x_v is None
    assert len(m.shared_blocks) == 2 and len(m.u_heads) == 1 and not hasattr(m, "v_heads")


def test_fresh_model_predicts_zero_image():
    # zero-initialised gates and output layers: x_u = 0 at init, so u = z / t
    m = pmf.build_model("pMF-Tiny/4")
    x_u, x_v = m(torch.randn(2, 3, 32, 32), 0.5, 1.0, 0.0, 1.0, torch.tensor([1, 2]))
    assert x_u.abs().max() == 0 and x_v.abs().max() == 0


@pytest.mark.parametrize("bad, match", [
    (dict(z=torch.randn(2, 3, 16, 16)), r"\[B, 3, 32, 32\].*\[2, 3, 16, 16\]"),
    (dict(z=torch.randn(2, 1, 32, 32)), r"\[2, 1, 32, 32\]"),
    (dict(y=torch.tensor([3, 11])), "label 11 out of range"),
    (dict(y=torch.tensor([-1, 0])), "label -1 out of range"),
    (dict(omega=torch.tensor([1.0, 0.0])), "omega must be positive, got 0.0"),
    (dict(t_min=0.8, t_max=0.2), "t_min must be <= t_max, got t_min=0.8"),
    (dict(h=torch.ones(3)), r"h must be a scalar or have shape \[2\]"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    m = pmf.build_model("pMF-Tiny/4")
    args = dict(z=torch.randn(2, 3, 32, 32), h=0.5, omega=2.0, t_min=0.1, t_max=0.9, y=torch.tensor([1, 2]))
    args.update(bad)
    with pytest.raises(PMFError, match=match):
        m(**args)


@pytest.mark.parametrize("override, match", [
    (dict(patch_size=5), "patch_size=5 does not divide input_size=32"),
    (dict(num_heads=5), "num_heads=5 does not divide hidden_size=64"),
    (dict(aux_head_depth=4), "aux_head_depth"),
    (dict(hidden_size=0), "hidden_size must be a positive integer, got 0"),
    (dict(colour=3), "unknown model override 'colour'"),
])
def test_bad_config_raises(override, match):
    with pytest.raises(PMFError, match=match):
        pmf.build_model("pMF-Tiny/4", **override)


def test_unknown_preset_lists_known():
    with pytest.raises(PMFError, match="unknown architecture 'pMF-XL/2'.*pMF-B/16"):
        pmf.build_model("pMF-XL/2")
