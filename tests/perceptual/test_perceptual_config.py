"""The perceptual terms' configuration and weights (spec 3.8): the recipes' thresholds, checked fields, no loss
when off, one error naming every missing weight file, local weight files, and a core package that imports
without the optional dependencies."""

import subprocess
import sys

import pytest
import torch

from helpers import ATTO
from helpers import PERCEPTUAL_CROP as CROP
from pmf.errors import PMFError
from pmf.perceptual import PerceptualConfig, build_perceptual
from pmf.perceptual import weights as W

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name,lpips_t,convnext_t", [("pMF-B/16", 0.8, 0.8), ("pMF-L/16", 0.8, 0.8),
                                                     ("pMF-B/32", 0.8, 0.8), ("pMF-L/32", 0.6, 0.6),
                                                     ("pMF-H/16", 1.0, 0.6), ("pMF-H/32", 1.0, 0.6)])
def test_recipes_gate_the_terms_as_the_release_configs(name, lpips_t, convnext_t):
    """perceptual_max_t 0.8 / 0.8 / 0.8 / 0.6 in the main branch's B and L configs; the H configs set only
    convnext_max_t 0.6, so LPIPS keeps the release's perceptual_max_t default of 1.0 (docs/perceptual.md)."""
    from pmf.training.recipes import recipe

    cfg = recipe(name).perceptual
    assert isinstance(cfg, PerceptualConfig)
    assert cfg.lpips and cfg.convnext and (cfg.lpips_lambda, cfg.convnext_lambda) == (0.4, 0.1)
    assert (cfg.threshold("lpips"), cfg.threshold("convnext")) == (lpips_t, convnext_t)


@pytest.mark.parametrize("field,value", [("lpips_lambda", -1.0), ("max_t", 0.0), ("norm_eps", 0.0),
                                         ("convnext_max_t", -0.5), ("lpips_max_t", "0.6"),
                                         ("crop_size", 16), ("crop_scale", (0.5, 0.1)), ("lpips", "yes"),
                                         ("lpips_weights", ""), ("convnext_model", "resnet50")])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(PMFError, match=f"perceptual.{field}"):
        PerceptualConfig(**{field: value})


def test_build_returns_none_when_off_and_rejects_unknown_fields():
    assert build_perceptual(None) is None
    assert build_perceptual(PerceptualConfig()) is None
    assert build_perceptual({"lpips": False}) is None
    with pytest.raises(PMFError, match="unknown perceptual fields"):
        build_perceptual({"lpips": True, "lpips_wieght": 1.0})


def test_random_init_warns():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        build_perceptual(PerceptualConfig(lpips=True, crop_size=CROP), random_init=True)


def test_missing_weights_raise_one_error_naming_the_files(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(W.LPIPS_ENV, raising=False)
    monkeypatch.delenv(W.CONVNEXT_ENV, raising=False)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    cfg = PerceptualConfig(lpips=True, convnext=True, download=False)
    with pytest.raises(PMFError) as err:
        build_perceptual(cfg)
    msg = str(err.value)
    assert "refusing to train with random features" in msg
    assert W.VGG16_FILE in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg and W.LPIPS_ENV in msg
    assert "model.safetensors of timm/convnextv2_base.fcmae_ft_in22k_in1k" in msg and W.CONVNEXT_ENV in msg
    monkeypatch.setenv(W.CONVNEXT_ENV, str(tmp_path / "nope.safetensors"))
    with pytest.raises(PMFError, match="nope.safetensors") as err:
        build_perceptual(PerceptualConfig(convnext=True, download=False))
    assert "train without the term: --no-convnext, or" in str(err.value)  # the flag of the missing term only


def test_local_weight_files_load_from_config_and_env(loss_fn, tmp_path, monkeypatch):
    pytest.importorskip("timm")
    from safetensors.torch import save_file

    src = loss_fn
    trunk = {k: v for k, v in src.lpips.state_dict().items() if k.startswith("features.")}  # torchvision layout
    torch.save(trunk, tmp_path / W.VGG16_FILE)
    save_file(src.convnext.net.state_dict(), str(tmp_path / "atto.safetensors"))
    monkeypatch.setenv(W.CONVNEXT_ENV, str(tmp_path / "atto.safetensors"))
    fn = build_perceptual(PerceptualConfig(lpips=True, convnext=True, convnext_model=ATTO, crop_size=CROP,
                                           lpips_weights=str(tmp_path / W.VGG16_FILE), download=False))
    for ours, ref in ((fn.lpips, src.lpips), (fn.convnext, src.convnext)):
        for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
            if k.startswith("lins"):
                continue
            assert torch.equal(a, b), k
    lin_file = W.lpips_lin_file()
    if lin_file is not None:  # the calibrated linear layers come from the lpips wheel
        assert torch.equal(fn.lpips.lins[0], torch.load(lin_file, map_location="cpu")["lin0.model.1.weight"].flatten())
    assert str(tmp_path / "atto.safetensors") in fn.describe()
    torch.save({"something": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(PMFError, match="does not hold"):
        build_perceptual(PerceptualConfig(lpips=True, lpips_weights=str(tmp_path / "bad.pth")))


def test_core_package_imports_without_the_optional_dependencies():
    code = ("import sys, pmf, pmf.perceptual, pmf.objective; "
            "print(sorted(m for m in ('timm', 'lpips', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
