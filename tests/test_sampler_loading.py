"""pmf.sampler_loading: a torch checkpoint and its ONNX export load as one kind of object whose sampling call
gives the same images; options that cannot apply are refused before any work; another EMA is another model."""

import dataclasses

import numpy as np
import pytest
import torch

import pmf
from helpers import random_model
from pmf.sampler_loading import SamplerOptions, load_sampler

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = [f"digit {i}" for i in range(10)]
SMALL = {"depth": 2, "aux_head_depth": 1, "input_size": 16}  # a quick export


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A training checkpoint with two EMAs, a recipe setting and class names."""
    model, other = (random_model(seed=s, **SMALL) for s in (1, 2))
    sd = model.state_dict()
    path = tmp_path_factory.mktemp("sampler") / "ck.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd,
                "ema": {"d0.9": sd, "d0.99": other.state_dict()}, "class_names": NAMES,
                "train_config": {"sample": {"omega": 2.0, "t_min": 0.1, "t_max": 0.9}}}, path)
    return path


@pytest.fixture(scope="module")
def files(ckpt):
    """The checkpoint and its ONNX export (of its default EMA, with its setting and class names)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pmf.export.onnx_export import export_onnx

    loaded = pmf.load_checkpoint(ckpt)
    setting = dataclasses.replace(loaded.setting, ema=loaded.ema)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_onnx(loaded, ckpt.with_name("g.onnx"), steps=1, setting=setting)
    finally:
        torch.set_num_threads(threads)
    return {"ckpt": ckpt, "onnx": ckpt.with_name("g.onnx")}


def _images(sampler, **guidance):
    labels = torch.tensor([3, 1, 4, 1, 5])
    setting = sampler.setting(**guidance)
    return np.concatenate([b.numpy() for _, b in sampler.generate(range(5), labels, seed=7, setting=setting,
                                                                  batch_size=2, progress=False)])


def test_a_checkpoint_and_its_onnx_export_sample_the_same_images(files):
    torch_sampler = load_sampler(files["ckpt"], SamplerOptions(device="cpu"))
    onnx_sampler = load_sampler(files["onnx"])
    assert not torch_sampler.onnx and onnx_sampler.onnx and onnx_sampler.device == "cpu"
    # one description of the model whatever the kind: the recorded setting, class names and preset
    fields = ("omega", "t_min", "t_max", "steps", "prediction")
    assert [getattr(torch_sampler.setting(), f) for f in fields] == [getattr(onnx_sampler.setting(), f) for f in fields]
    assert torch_sampler.setting().omega == 2.0 and torch_sampler.ema == "d0.9"
    assert torch_sampler.loaded.class_names == onnx_sampler.loaded.class_names == NAMES
    assert {**torch_sampler.config.to_dict(), "v_head": False} == onnx_sampler.config.to_dict()  # u-head only
    assert torch_sampler.weights == onnx_sampler.weights == {"precision": "fp32"}
    assert torch_sampler.step_limits is None and onnx_sampler.step_limits == (1, 1)
    for guidance in ({}, {"omega": 3.5, "t_min": 0.2, "t_max": 0.7}):
        want, got = _images(torch_sampler, **guidance), _images(onnx_sampler, **guidance)
        assert want.shape == (5, 16, 16, 3) and want.std() > 5  # images that vary: the comparison is not vacuous
        assert np.abs(want.astype(int) - got.astype(int)).max() <= 1  # float32 op order: one level at most
    assert not np.array_equal(_images(torch_sampler), _images(torch_sampler, omega=3.5))


@pytest.mark.parametrize("change, flag", [
    ({"compile": True}, "--compile"), ({"ema": "d0.9"}, "--ema"), ({"arch": "pMF-Tiny/4"}, "--arch"),
    ({"precision": "bf16"}, "--precision"), ({"device": "cuda"}, "--device"), ({"steps": 2}, "--steps"),
    ({"noise_scale": 9.0}, "--noise-scale"),
])
def test_options_an_onnx_file_cannot_take_are_refused_by_name(files, change, flag):
    with pytest.raises(pmf.PMFError, match=flag):
        load_sampler(files["onnx"], SamplerOptions(**change))


def test_another_ema_is_another_model_and_the_setting_says_so(ckpt):
    first = load_sampler(ckpt, SamplerOptions(device="cpu"))
    assert first.ema == "d0.9" and first.with_ema("d0.9") is first
    second = first.with_ema("d0.99")
    assert second.ema == "d0.99" and "EMA from the flags" in second.setting().describe()
    assert not np.array_equal(_images(first), _images(second))
    assert np.array_equal(_images(second), _images(load_sampler(ckpt, SamplerOptions(ema="d0.99", device="cpu"))))


def test_random_takes_the_seeds_weights_and_needs_an_arch():
    with pytest.raises(pmf.PMFError, match="--checkpoint random needs --arch"):
        load_sampler("random")
    a, b = (load_sampler("random", SamplerOptions(arch="pMF-Tiny/4", seed=s, device="cpu")) for s in (3, 3))
    c = load_sampler("random", SamplerOptions(arch="pMF-Tiny/4", seed=4, device="cpu"))
    sd = a.loaded.model.state_dict()
    assert all(torch.equal(v, b.loaded.model.state_dict()[k]) for k, v in sd.items())
    assert not all(torch.equal(v, c.loaded.model.state_dict()[k]) for k, v in sd.items())
    assert a.setting().omega == 1.0 and a.noise_scale == a.config.noise_scale
