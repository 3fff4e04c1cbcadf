"""pmfDiT: fixture parity, presets, attention paths, RoPE, input validation."""

import json

import numpy as np
import pytest
import torch

import pmf
from helpers import load_npz
from pmf.errors import PMFError
from pmf.nn.attention import attention_backend, rope_angles
from pmf.nn.common import apply_rope
from pmf.nn.release import release_rope_freqs, to_release_key

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
        x_u, x_v, _ = m(*args)
    clip = io["t"].clamp(0.05, 1).view(-1, 1, 1, 1)
    assert (seq - io["dbg_seq_in"]).abs().max() <= 1e-5
    assert (trunk - io["dbg_seq_after_shared"]).abs().max() <= 1e-5
    assert (x_u - (io["x"] - io["u"] * clip)).abs().max() <= 1e-5
    assert (x_v - (io["x"] - io["v"] * clip)).abs().max() <= 1e-5
    # the conditioning inputs matter: a different omega changes the output well above the tolerance
    with torch.no_grad():
        x_u2 = m(io["x"], io["h"], io["omega"] + 2, io["t_min"], io["t_max"], io["y"]).x_u
    assert (x_u2 - x_u).abs().max() > 1e-3


def test_math_and_sdpa_attention_agree(tiny_model, io):
    args = (io["x"], io["h"], io["omega"], io["t_min"], io["t_max"], io["y"])
    with torch.no_grad():
        a = tiny_model(*args).x_u
        with attention_backend("math"):
            b = tiny_model(*args).x_u
    assert (a - b).abs().max() <= 2e-6


def test_rope_matches_complex_rotation():
    torch.manual_seed(0)
    from pmf.model_configs import ModelConfig

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
    x_u, x_v, _ = m(z, torch.ones(2), 2.0, 0.1, 0.9, torch.tensor([0, 5]))
    assert x_u.shape == z.shape and x_v is None
    assert len(m.shared_blocks) == 2 and len(m.u_heads) == 1 and not hasattr(m, "v_heads")


def test_fresh_model_predicts_zero_image():
    # zero-initialised gates and output layers: x_u = 0 at init, so u = z / t
    m = pmf.build_model("pMF-Tiny/4")
    x_u, x_v, _ = m(torch.randn(2, 3, 32, 32), 0.5, 1.0, 0.0, 1.0, torch.tensor([1, 2]))
    assert x_u.abs().max() == 0 and x_v.abs().max() == 0


@pytest.mark.parametrize("bad, match", [
    (dict(z=torch.randn(2, 3, 16, 16)), r"\[B, 3, 32, 32\].*\[2, 3, 16, 16\]"),
    (dict(z=torch.randn(2, 1, 32, 32)), r"\[2, 1, 32, 32\]"),
    (dict(y=torch.tensor([3, 11])), "label 11 out of range"),
    (dict(y=torch.tensor([-1, 0])), "label -1 out of range"),
    (dict(omega=torch.tensor([1.0, 0.0])), "omega must be > 0 and finite .*, got 0"),
    (dict(t_min=0.8, t_max=0.2), r"needs t_min <= t_max, got \[0.8, 0.2\]"),
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


def test_model_fields_are_the_configs_before_its_checks():
    """model_fields is model_config's merge (defaults, preset, overrides not None, the with_v_head alias) without
    ModelConfig's joint checks, so a caller can read one field of a combination not yet valid."""
    from dataclasses import asdict

    from pmf.model_configs import model_config, model_fields

    assert model_fields("pMF-Tiny/4", depth=None, with_v_head=False) == asdict(model_config("pMF-Tiny/4",
                                                                                           v_head=False))
    fields = model_fields("pMF-Tiny/4", patch_size=12)  # 12 does not divide the preset's 32
    assert (fields["input_size"], fields["patch_size"]) == (32, 12)
    with pytest.raises(PMFError, match="patch_size=12 does not divide input_size=32"):
        model_config("pMF-Tiny/4", patch_size=12)
    with pytest.raises(PMFError, match="unknown model override 'colour'"):
        model_fields("pMF-Tiny/4", colour=3)


def test_unknown_preset_lists_known():
    with pytest.raises(PMFError, match="unknown architecture 'pMF-XL/2'.*pMF-B/16"):
        pmf.build_model("pMF-XL/2")


def _init_rule(name: str, shape, D: int) -> tuple[str, float]:
    """(kind, value) of the release's initialiser for a parameter of ours: ('const', c), ('normal', std) or
    ('xavier', limit), written from the spec (section 5), independently of the model code."""
    if name.endswith(("attn_scale", "mlp_scale", ".bias")) or name.startswith(("u_final_layer.linear",
                                                                                 "v_final_layer.linear")):
        return "const", 0.0
    if "norm" in name:
        return "const", 1.0
    if name == "pos_embed":
        return "normal", 0.02
    if name.endswith("_tokens") or name.startswith("y_embedder"):
        return "normal", D**-0.5
    if name.startswith("x_embedder"):
        fan_in, fan_out = int(np.prod(shape[1:])), shape[0]
        return "xavier", (6 / (fan_in + fan_out)) ** 0.5
    gain = 1.0 if name.split(".")[0] in ("h_embedder", "omega_embedder", "cfg_t_start_embedder",
                                         "cfg_t_end_embedder") else 0.32
    return "normal", gain / shape[1] ** 0.5


def test_initialisation_matches_the_release_statistics(fixtures_dir):
    """Per tensor of pMF-Tiny/4 (training mode), over seeds 0-3: constants equal, std and bounds as the
    release's constructor gave them (init_stats_tiny.json)."""
    ref = json.loads((fixtures_dir / "init_stats_tiny.json").read_text())
    models = []
    for seed in range(4):
        torch.manual_seed(seed)
        models.append({to_release_key(k): v for k, v in pmf.build_model("pMF-Tiny/4").state_dict().items()})
    assert set(ref) == set(models[0]) - {"rope_freqs"}
    for key, want in ref.items():
        values = torch.stack([m[key].double() for m in models])
        assert list(values.shape[1:]) == want["shape"], key
        if want["min"] == want["max"]:
            assert (values == want["min"]).all(), key
            continue
        n = values[0].numel()
        std = values.flatten(1).std(dim=1).mean().item()
        tol = 4 * (0.5 / (4 * n)) ** 0.5 * 2 + 0.01  # two independent 4-seed estimates of the std
        assert abs(std / want["std"] - 1) < tol, (key, std, want["std"])
        assert abs(values.mean().item()) < 5 * want["std"] / (4 * n) ** 0.5, key
        if "x_embedder" in key:  # Xavier-uniform: bounded by the same limit the release reached
            assert values.abs().max().item() <= max(abs(want["min"]), want["max"]) * 1.01, key
            assert values.abs().max().item() >= max(abs(want["min"]), want["max"]) * 0.98, key


@pytest.mark.parametrize("arch", ["pMF-Tiny/4", "pMF-S/4", "pMF-MNIST/7"])
def test_initialisation_follows_the_release_rule_for_every_small_preset(arch):
    torch.manual_seed(0)
    model = pmf.build_model(arch)
    D = model.config.hidden_size
    for name, p in model.named_parameters():
        kind, value = _init_rule(name, tuple(p.shape), D)
        x = p.detach().double()
        if kind == "const":
            assert (x == value).all(), name
        elif kind == "xavier":
            assert x.abs().max() <= value and x.abs().max() > 0.9 * value, name
            assert abs(x.std().item() / (value / 3**0.5) - 1) < 0.1, name
        else:
            tol = 5 * (0.5 / x.numel()) ** 0.5 + 0.02
            assert abs(x.std().item() / value - 1) < tol, (name, x.std().item(), value)
