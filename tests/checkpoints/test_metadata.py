"""The model-metadata record (pmf.checkpoints.metadata): one ``ModelMetadata`` (setting, class names, preset,
weights, data) read the same from a training checkpoint, its ONNX export, its hub folder and its diffusers
pipeline; ``pmf sample --classes`` takes a model's class names and, for an ImageNet model, the ImageNet names."""

import json

import numpy as np
import pytest
import torch

import pmf
from helpers import random_model
from pmf.checkpoints.metadata import FP32, ModelMetadata
from pmf.class_choice import imagenet_names, name_index
from pmf.cli import main
from pmf.sampling_setting import SamplingSetting

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay", "kiwi", "lynx"]
RECIPE = {"omega": 2.0, "t_min": 0.1, "t_max": 0.9}


def _checkpoint(path, model, names=NAMES, data="my-folder"):
    sd = model.state_dict()
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd, "ema": {"d0.9": sd},
                "train_config": {"arch": "pMF-Tiny/4", "sample": RECIPE, "data": data}, "class_names": names}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("meta") / "ck.pt", random_model(seed=2))


def test_the_record_resolves_names_once_and_round_trips():
    meta = ModelMetadata.resolve(10, setting=SamplingSetting(**RECIPE), preset="pMF-Tiny/4", data="digits")
    assert meta.class_names == [str(i) for i in range(10)] and meta.weights == FP32  # the built-in sets' digits
    assert ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict())), 10) == meta
    assert ModelMetadata.resolve(3, setting=SamplingSetting(), recorded=["a", "b", "c"]).class_names == ["a", "b", "c"]
    assert ModelMetadata.resolve(2, setting=SamplingSetting()).class_names == ["class 0", "class 1"]
    assert name_index(["tench, Tinca tinca", "goldfish"]) == {"tench, Tinca tinca": 0, "goldfish": 1, "tench": 0,
                                                              "Tinca tinca": 0}


def test_checkpoint_hub_folder_and_diffusers_carry_the_same_record(ckpt, tmp_path):
    loaded = pmf.load_checkpoint(ckpt)
    want = loaded.meta.to_dict()
    assert want == {"sampling_setting": {**SamplingSetting(**RECIPE, ema="d0.9").to_dict(),
                                         "source": loaded.setting.source},
                    "class_names": NAMES, "preset": "pMF-Tiny/4", "weights": FP32, "data": "my-folder"}
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    hub = pmf.load_checkpoint(tmp_path / "hub")
    assert hub.meta.to_dict() == want and hub.class_names == NAMES
    try:
        from pmf.export.diffusers_pipeline import PixelMeanFlowPipeline
    except Exception:  # diffusers not installed
        return
    pipe = PixelMeanFlowPipeline.from_pretrained(str(tmp_path / "hub"))
    assert pipe.transformer.meta.to_dict() == want and pipe.get_label_ids(["dog", 3]) == [1, 3]
    pipe.save_pretrained(tmp_path / "again")
    assert pmf.load_checkpoint(tmp_path / "again").meta.to_dict() == want


def test_the_onnx_export_carries_the_same_record(ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pmf.export.onnx_runtime import OnnxGenerator

    out = tmp_path / "g.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert OnnxGenerator(out).meta.to_dict() == pmf.load_checkpoint(ckpt).meta.to_dict()
    assert main(["sample", "--checkpoint", str(out), "--classes", "eel,gnu", "--per-class", "1", "--no-png",
                 "--no-progress", "--out", str(tmp_path / "s")]) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["labels"].tolist() == [2, 4]


def test_sample_takes_the_model_class_names(ckpt, tmp_path):
    assert main(["sample", "--checkpoint", str(ckpt), "--classes", "dog,kiwi-lynx", "--per-class", "1", "--no-png",
                 "--no-progress", "--out", str(tmp_path)]) == 0
    assert np.load(tmp_path / "samples.npz")["labels"].tolist() == [1, 8, 9]


def test_sample_takes_imagenet_names_for_an_imagenet_model(tmp_path):
    names = imagenet_names()
    if names is None:
        pytest.skip("the ImageNet names come with torchvision")
    ckpt = _checkpoint(tmp_path / "in.pt", random_model(seed=5, num_classes=1000), names=None, data="imagenet-1k")
    assert pmf.load_checkpoint(ckpt).meta.class_names == names
    assert main(["sample", "--checkpoint", str(ckpt), "--classes", f"{names[1]},{names[207]}", "--per-class", "1",
                 "--no-png", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    assert np.load(tmp_path / "s" / "samples.npz")["labels"].tolist() == [1, 207]


def test_server_and_exporters_share_the_record_not_each_other():
    from test_checkpoint_imports import module_graph

    graph = module_graph()
    between = {(a, b) for a, edges in graph.items() for b in edges
               if a.startswith("pmf.serve") and b.startswith("pmf.export")
               or a.startswith("pmf.export") and b.startswith("pmf.serve")}
    assert not between, between
    assert "pmf.checkpoints.metadata" in graph["pmf.serve.model_info"]
    users = {a for a, edges in graph.items() if "pmf.checkpoints.metadata" in edges}
    assert {"pmf.checkpoints.load", "pmf.checkpoints.hub", "pmf.export.onnx_runtime",
            "pmf.export.diffusers_pipeline"} <= users
