"""The representation registry: names, one-line errors for unknown names and missing weights, and that every
entry is frozen, differentiable with respect to the images and faithful to the network it wraps."""

import numpy as np
import pytest
import torch

from helpers import random_inception_file
from pmf.errors import PMFError
from pmf.evaluation import offline_score as quality
from pmf.evaluation.inception import WEIGHTS_FILE
from pmf.evaluation.representations import extract, from_uint8, get_representation, representation_names
from pmf.evaluation.representations import timm_models as tm

pytestmark = pytest.mark.usefixtures("one_thread")


def _classifier(size=28, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return quality.Classifier(size).eval()


def _frozen_and_differentiable(rep, size):
    assert all(not p.requires_grad for p in rep.parameters()) and not rep.training
    rep.train()  # a parent's .train() must not switch batch norm or dropout on
    assert not rep.training
    x = (torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_(True)
    f = rep(x)
    assert f.shape == (2, rep.feature_dim) and f.dtype == torch.float32
    (f ** 2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_names_and_unknown_names():
    names = representation_names()
    assert {"offline", "inception", "pixels", "dinov2", "mae", "clip", "siglip", "convnext_v2"} <= set(names)
    with pytest.raises(PMFError, match="unknown representation 'inceptoin'") as err:
        get_representation("inceptoin")
    assert "\n" not in str(err.value)
    with pytest.raises(PMFError, match="does not take these options"):
        get_representation("pixels", dataset="mnist-5k")


def test_offline_is_the_classifier_conv_maps_and_penultimate_layer():
    clf = _classifier()
    rep = get_representation("offline", classifier=clf)
    assert rep.feature_dim == 16 * 7 * 7 + 64 and rep.input_size == 28
    u8 = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    with torch.no_grad():
        f = rep(from_uint8(u8))
        x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
        assert torch.allclose(f[:, -64:], clf.features(x), atol=1e-5)
        assert torch.allclose(f[:, :-64], clf.conv(x).flatten(1), atol=1e-5)
        padded = np.pad(u8, ((0, 0), (2, 2), (2, 2), (0, 0)))  # MNIST zero-padded to 32 crops back exactly
        assert torch.allclose(rep(from_uint8(padded)), f, atol=1e-5)
        assert torch.allclose(rep(from_uint8(np.repeat(u8, 3, axis=3))), f, atol=1e-5)  # RGB averaged
        assert rep(from_uint8(np.zeros((2, 64, 64, 3), np.uint8))).shape == (2, rep.feature_dim)  # resized
        big = np.repeat(np.repeat(u8, 2, axis=1), 2, axis=2)  # an upsampled 56 px copy is pooled back exactly,
        assert torch.allclose(rep(from_uint8(big)), f, atol=1e-5)  # as the offline score reads it
    pre = rep.preprocessing()
    assert pre["input_size"] == 28 and pre["dataset"] == "mnist-5k"
    assert "crop" in pre["resize"] and "pooling" in pre["resize"]
    _frozen_and_differentiable(rep, 28)


def test_bad_images_are_one_line():
    rep = get_representation("pixels", size=8)
    with pytest.raises(PMFError, match=r"C = 1 or 3"):
        rep(torch.zeros(2, 4, 8, 8))
    with pytest.raises(PMFError, match="uint8"):
        extract(rep, np.zeros((2, 8, 8, 1), np.float32))
    _frozen_and_differentiable(rep, 12)


def test_inception_matches_torch_fidelity_on_uint8_images(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("PMF_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(PMFError, match=WEIGHTS_FILE) as err:
        get_representation("inception")
    assert "\n" not in str(err.value)
    weights = random_inception_file(tmp_path / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE)
    rep = get_representation("inception")
    assert rep.preprocessing()["weights_file"] == WEIGHTS_FILE and rep.feature_dim == 2048
    u8 = np.random.default_rng(1).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    out = extract(rep, u8)
    from pmf.evaluation.inception import inception_features, load_inception

    pool, logits = inception_features(load_inception(weights), u8)
    assert np.abs(out["features"] - pool).max() <= 1e-4 * np.abs(pool).max()
    assert np.abs(out["logits"] - logits).max() <= 1e-4 * np.abs(logits).max()
    assert out["spatial"].shape == (2, 7 * 17 * 17)
    _frozen_and_differentiable(rep, 16)


def _small_dinov2_file(path):
    """A DINOv2 ViT in timm's layout, shrunk (2 blocks, width 48) and with random weights; layer scales set
    to 1 so the features depend visibly on the image."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("vit_large_patch14_dinov2.lvd142m", pretrained=False, num_classes=0, **SMALL)
    sd = {k: torch.ones_like(v) if k.endswith(".gamma") else v for k, v in net.state_dict().items()}
    from safetensors.torch import save_file

    save_file(sd, str(path))
    return path


SMALL = dict(img_size=224, depth=2, embed_dim=48, num_heads=2)


def test_timm_dinov2_layout_from_a_local_file(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("PMF_DINOV2_WEIGHTS", raising=False)
    with pytest.raises(PMFError, match="PMF_DINOV2_WEIGHTS.*model.safetensors") as err:
        get_representation("dinov2")
    assert "\n" not in str(err.value)
    monkeypatch.setitem(tm.ALIASES, "dinov2", tm.TimmSpec("vit_large_patch14_dinov2.lvd142m", 224, SMALL))
    path = _small_dinov2_file(tmp_path / "dinov2.safetensors")
    monkeypatch.setenv("PMF_DINOV2_WEIGHTS", str(path))
    rep = get_representation("dinov2")
    assert torch.equal(rep.net.blocks[0].ls1.gamma, torch.ones(48))  # the file's values, not timm's init (1e-5)
    pre = rep.preprocessing()
    assert rep.feature_dim == 48 and rep.input_size == 224 and "class token" in pre["pooling"]
    assert pre["timm_model"] == "vit_large_patch14_dinov2.lvd142m" and "bicubic" in pre["resize"]
    _frozen_and_differentiable(rep, 32)
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(bad))
    with pytest.raises(PMFError, match="does not hold vit_large_patch14_dinov2.lvd142m weights"):
        get_representation("dinov2", weights=str(bad))
    with pytest.raises(PMFError, match="does not exist"):
        get_representation("dinov2", weights=str(tmp_path / "nothing.safetensors"))
