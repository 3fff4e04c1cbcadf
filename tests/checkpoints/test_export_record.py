"""The one-weight-set exports (``export_ema``: ``.safetensors`` and the release-format ``.pt`` with its sidecar) carry
the whole model record (preset, data, weights, class names, setting) and load back into the same record; exports
written before they carried it still load."""

import json

import pytest
import torch

import pmf
from helpers import random_model
from pmf.checkpoints.load import export_ema
from pmf.checkpoints.metadata import FP32
from pmf.sampling_setting import SamplingSetting, sidecar_path

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay", "kiwi", "lynx"]
RECIPE = {"omega": 2.0, "t_min": 0.1, "t_max": 0.9}
SMALL = {"depth": 2, "aux_head_depth": 1, "input_size": 16}  # shapes no preset has: the preset is the record's only


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = random_model(seed=3, **SMALL)
    sd = model.state_dict()
    path = tmp_path_factory.mktemp("export_record") / "ck.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd, "ema": {"d0.9": sd},
                "train_config": {"arch": "pMF-Tiny/4", "sample": RECIPE, "data": "my-folder"}, "class_names": NAMES},
               path)
    return path


def _same_record(got, want):
    assert (got.preset, got.data, got.weights, got.class_names) == (want.preset, want.data, want.weights,
                                                                     want.class_names)
    fields = ("omega", "t_min", "t_max", "steps", "prediction")
    assert [getattr(got.setting, f) for f in fields] == [getattr(want.setting, f) for f in fields]


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])
def test_an_export_reloads_with_the_whole_record(ckpt, tmp_path, name):
    want = pmf.load_checkpoint(ckpt).meta
    assert (want.preset, want.data, want.class_names) == ("pMF-Tiny/4", "my-folder", NAMES)
    got = pmf.load_checkpoint(export_ema(ckpt, tmp_path / name), arch=None).meta
    _same_record(got, want)
    assert got.setting.ema is None and "recorded in the export" in got.setting.source  # its weights are d0.9's


def test_an_unnamed_models_export_resolves_the_same_names(tmp_path):
    model = random_model(seed=4, **SMALL)
    path = tmp_path / "ck.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict(),
                "train_config": {"arch": "pMF-Tiny/4", "data": "digits"}}, path)
    st = export_ema(path, tmp_path / "m.safetensors")
    _same_record(pmf.load_checkpoint(st).meta, pmf.load_checkpoint(path).meta)
    assert pmf.load_checkpoint(st).meta.class_names == [str(i) for i in range(10)]  # the built-in set's digits
    assert pmf.load_checkpoint(st).class_names is None  # recorded by none of the two files


def test_older_exports_without_the_record_still_load(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    st = export_ema(ckpt, tmp_path / "m.safetensors")
    old = tmp_path / "old.safetensors"
    setting = SamplingSetting(**RECIPE, ema="d0.9").to_json()
    save_file(load_file(st), old, metadata={"model_config": json.dumps(pmf.load_checkpoint(st).model.config.to_dict()),
                                            "format": "pixel-meanflow", "sampling_setting": setting})
    meta = pmf.load_checkpoint(old).meta
    assert (meta.preset, meta.data, meta.weights, meta.setting.omega) == (None, None, FP32, 2.0)
    assert meta.class_names == [f"class {i}" for i in range(10)]
    rel = export_ema(ckpt, tmp_path / "m.pt")
    sidecar_path(rel).write_text(json.dumps({"format": "pixel-meanflow", "sampling_setting": json.loads(setting)}))
    meta = pmf.load_checkpoint(rel).meta
    assert (meta.data, meta.weights, meta.setting.t_max) == (None, FP32, 0.9)
    sidecar_path(rel).unlink()
    assert pmf.load_checkpoint(rel).meta.setting.source != meta.setting.source  # no sidecar: the shapes' defaults
