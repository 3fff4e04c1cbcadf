"""Release checkpoint format: strict loading, export round trips, file errors."""

import pytest
import torch

import pmf
from pmf.checkpoints.load import load_model, read_file
from pmf.errors import CheckpointError
from pmf.nn.release import infer_config


def test_export_reproduces_release_file_bit_for_bit(tiny_model, tiny_release_sd):
    out = pmf.release_state_dict(tiny_model)
    assert set(out) == set(tiny_release_sd)
    for k, v in tiny_release_sd.items():
        if k == "rope_freqs":
            assert out[k].dtype == torch.complex64 and torch.allclose(out[k], v, atol=1e-6)
        else:
            assert torch.equal(out[k], v), k


def test_export_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(3)
    a = pmf.build_model("pMF-S/4")
    for p in a.parameters():  # zero-initialised parameters would make the round trip trivially equal
        torch.nn.init.normal_(p)
    path = tmp_path / "release.pt"
    torch.save(pmf.release_state_dict(a, prefix="net."), path)
    b = load_model(path)  # architecture inferred from the shapes, net. prefix stripped
    assert b.config.hidden_size == 256 and b.config.depth == 6
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_inference_checkpoint_without_v_head(tiny_release_sd, tmp_path):
    sd = {k: v for k, v in tiny_release_sd.items() if not k.startswith(("v_heads", "v_final"))}
    torch.save(sd, tmp_path / "inf.pt")
    m = load_model(tmp_path / "inf.pt", arch="pMF-Tiny/4")
    assert not m.has_v_head
    with pytest.raises(CheckpointError, match="missing keys: v_final_layer.linear.bias.*with v_head=False"):
        pmf.load_release_state_dict(pmf.build_model("pMF-Tiny/4"), sd)


def test_mismatched_checkpoint_lists_keys_and_suggests_preset(tiny_release_sd):
    with pytest.raises(CheckpointError) as err:
        pmf.load_release_state_dict(pmf.build_model("pMF-S/4"), tiny_release_sd)
    msg = str(err.value)
    assert "shape mismatches" in msg and "file (64, 64) vs model (256, 256)" in msg
    assert "missing keys: shared_blocks.2" in msg and "fits preset 'pMF-Tiny/4'" in msg
    extra = dict(tiny_release_sd, **{"bogus.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected keys: bogus.weight"):
        pmf.load_release_state_dict(pmf.build_model("pMF-Tiny/4"), extra)


def test_infer_config_recovers_tiny(tiny_release_sd):
    cfg = infer_config(tiny_release_sd)
    assert cfg == pmf.model_config("pMF-Tiny/4")


def test_truncated_and_foreign_files_give_clear_errors(tiny_release_sd, tmp_path):
    full = tmp_path / "full.pt"
    torch.save(tiny_release_sd, full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*not a readable PyTorch checkpoint.*truncated"):
        read_file(cut)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt.*not a readable"):
        load_model(text)
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*missing.pt"):
        load_model(tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_model(tmp_path / "list.pt")


def test_safetensors_release_file(tiny_model, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v for k, v in pmf.release_state_dict(tiny_model).items() if k != "rope_freqs"}
    save_file(sd, tmp_path / "w.safetensors")
    m = load_model(tmp_path / "w.safetensors", arch="pMF-Tiny/4")
    assert torch.equal(m.pos_embed, tiny_model.pos_embed)


def test_released_checkpoints_default_to_the_released_setting(tmp_path):
    import pmf
    from pmf.released_models import RELEASED
    from pmf.sampling import default_setting

    for arch, rel in RELEASED.items():
        cfg = pmf.model_config(arch, v_head=False)
        s = default_setting(cfg)  # a release-format file: recognised from its config
        assert (s.omega, s.t_min, s.t_max, s.ema) == (rel.omega, rel.t_min, rel.t_max, None)
        s = default_setting(cfg, {"arch": arch}, ["hl500", "hl1000", "hl2000"])  # our checkpoint of that recipe
        assert s.ema == f"hl{rel.ema_halflife_kimg}" and s.omega == rel.omega
    s = default_setting(pmf.model_config("pMF-B/16", hidden_size=384, num_heads=6))  # not a released model
    assert (s.omega, s.t_min, s.t_max) == (1.0, 0.0, 1.0)
    # A CPU recipe's checkpoint: its recipe's grid setting and its first EMA.
    s = default_setting(pmf.model_config("pMF-MNIST/7"),
                        {"arch": "pMF-MNIST/7", "sample": {"omega": 3.0, "t_min": 0.1, "t_max": 0.8}}, ["d0.99"])
    assert (s.omega, s.t_min, s.t_max, s.ema) == (3.0, 0.1, 0.8, "d0.99")
    # A release-format file loads with the released setting of the preset it fits.
    model = pmf.build_model("pMF-Tiny/4", v_head=False)
    torch.save(pmf.release_state_dict(model, prefix="net."), tmp_path / "tiny.pt")
    loaded = pmf.load_checkpoint(tmp_path / "tiny.pt")
    assert loaded.arch == "pMF-Tiny/4" and loaded.ema is None and loaded.setting.omega == 1.0
    with pytest.raises(pmf.CheckpointError, match="training checkpoint"):
        pmf.load_checkpoint(tmp_path / "tiny.pt", ema="hl1000")
