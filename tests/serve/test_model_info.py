"""The server's ``ModelInfo`` is the loaded model's ``ModelMetadata`` record (with the network's size): equal for a
torch checkpoint and its ONNX export, field by field the record's."""

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import pmf  # noqa: E402
from helpers import random_model, recorded_checkpoint  # noqa: E402
from pmf.checkpoints.metadata import ModelMetadata  # noqa: E402
from pmf.cli import build_parser, main  # noqa: E402
from pmf.commands.serve import build  # noqa: E402
from pmf.model_configs import model_config  # noqa: E402
from pmf.sampling_setting import SamplingSetting  # noqa: E402
from pmf.serve.model_info import ModelInfo  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay", "kiwi", "lynx"]


def test_from_meta_takes_every_field_of_the_record():
    config = model_config("pMF-Tiny/4", noise_scale=2.0)
    int8 = {"precision": "int8", "method": "dynamic", "error": {"max_levels": 1}}
    meta = ModelMetadata(SamplingSetting(omega=3.0, t_min=0.2, t_max=0.7, steps=2, ema="hl1000"), NAMES, "pMF-B/16",
                         int8, "imagenet-1k")
    info = ModelInfo.from_meta(meta, config, ema="hl1000")
    assert info == ModelInfo("pMF-B/16", config.input_size, config.in_channels, NAMES, meta.setting, 2.0, "hl1000",
                             weights=int8)
    assert info.class_names is not meta.class_names and info.weights is not meta.weights  # copies, not the record's


def test_a_checkpoint_and_its_onnx_export_give_the_same_info(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = random_model(seed=2)
    ckpt = recorded_checkpoint(tmp_path / "ck.pt", model, data="my-folder", class_names=NAMES)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "g.onnx")]) == 0
    infos = {}
    for spec in (ckpt, tmp_path / "g.onnx"):
        _, infos[spec.suffix], _ = build(build_parser().parse_args(["serve", "--checkpoint", str(spec)]))
    meta = pmf.load_checkpoint(ckpt).meta
    assert infos[".pt"] == infos[".onnx"] == ModelInfo.from_meta(meta, model.config, ema="d0.9")
    info = infos[".onnx"]
    assert (info.preset, info.class_names, info.setting, info.weights) == \
        (meta.preset, meta.class_names, meta.setting, meta.weights) == \
        ("pMF-Tiny/4", NAMES, meta.setting, {"precision": "fp32"})
