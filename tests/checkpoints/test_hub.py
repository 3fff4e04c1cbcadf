"""The Hugging Face Hub format (pmf.checkpoints.hub): pmf export --format hub writes a folder that
PMFDiT.from_pretrained,
pmf.load_checkpoint and pmf sample read back to the same weights, setting and class names."""

import json

import numpy as np
import pytest
import torch

import pmf
from helpers import random_model
from pmf.checkpoints.hub import hub_repo_id, is_hub_folder
from pmf.checkpoints.hub_card import model_card
from pmf.cli import main
from pmf.nn.model import u_head_only

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = [f"digit {i}" for i in range(10)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub")
    model, ema = random_model(seed=3), random_model(seed=4)
    ckpt = folder / "ck.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": model.state_dict(),
                "ema": {"d0.9": ema.state_dict()}, "class_names": NAMES,
                "train_config": {"arch": "pMF-Tiny/4", "sample": {"omega": 2.5, "t_min": 0.2, "t_max": 0.7}}}, ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "hub", "--out", str(folder / "hub")]) == 0
    return {"ckpt": ckpt, "dir": folder / "hub", "ema": ema}


def test_folder_layout_and_card(exported):
    d = exported["dir"]
    assert is_hub_folder(d) and {p.name for p in d.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((d / "config.json").read_text())
    assert config["config"]["v_head"] is False and config["class_names"] == NAMES
    assert config["sampling_setting"]["omega"] == 2.5 and config["sampling_setting"]["ema"] == "d0.9"
    card = (d / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "2601.22158" in card and "omega 2.5" in card
    assert "PixelMeanFlowPipeline.from_pretrained" in card and "pmf sample --checkpoint" in card
    assert "FID: not measured" in card
    released = {**config, "preset": "pMF-B/16"}
    assert "FID-50K **3.15**" in model_card(released) and "FID-50K of these weights: **4.2**" in model_card(
        {**config, "fid": 4.2})


def test_from_pretrained_reloads_weights_setting_and_names(exported, tmp_path):
    model = pmf.PMFDiT.from_pretrained(exported["dir"])
    want = u_head_only(exported["ema"]).state_dict()  # the checkpoint's default EMA, u-head only
    got = model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert model.sampling_setting.omega == 2.5 and model.class_names == NAMES
    loaded = pmf.load_checkpoint(exported["dir"])
    assert loaded.setting == model.sampling_setting and loaded.class_names == NAMES and loaded.arch == "pMF-Tiny/4"
    assert loaded.setting.t_min == 0.2 and loaded.setting.t_max == 0.7 and loaded.ema == "d0.9"
    # saving the reloaded model writes the same folder again
    model.save_pretrained(tmp_path / "again")
    for name in ("config.json", "README.md"):
        assert (tmp_path / "again" / name).read_text() == (exported["dir"] / name).read_text()
    again = pmf.load_checkpoint(tmp_path / "again").model.state_dict()
    assert all(torch.equal(again[k], want[k]) for k in want)


def test_sample_from_the_folder_equals_the_checkpoint(exported, tmp_path):
    common = ["--classes", "3,1,4", "--per-class", "1", "--seed", "5", "--no-progress", "--no-png"]
    assert main(["sample", "--checkpoint", str(exported["dir"]), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["sample", "--checkpoint", str(exported["ckpt"]), "--out", str(tmp_path / "b"), *common]) == 0
    a, b = (np.load(tmp_path / x / "samples.npz")["images"] for x in "ab")
    assert np.array_equal(a, b)


def test_repo_ids_and_offline_errors(tmp_path, monkeypatch):
    assert hub_repo_id("owner/repo") == "owner/repo" and hub_repo_id("hf:owner/my.repo") == "owner/my.repo"
    assert hub_repo_id(str(tmp_path)) is None and hub_repo_id("hf:owner/repo/file.pt") is None
    with pytest.raises(pmf.CheckpointError, match="neither a folder"):
        pmf.PMFDiT.from_pretrained(tmp_path)
    pytest.importorskip("huggingface_hub", reason="needs pip install 'pixel-meanflow[hub]'")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(pmf.CheckpointError, match="could not fetch the hub repo"):
        pmf.PMFDiT.from_pretrained("someone/no-such-pmf-repo")


def test_a_hub_export_onto_a_file_is_one_line(exported, tmp_path, capsys):
    (tmp_path / "g.onnx").write_bytes(b"not a folder")
    assert main(["export", "--checkpoint", str(exported["ckpt"]), "--format", "hub",
                 "--out", str(tmp_path / "g.onnx")]) == 2
    err = capsys.readouterr().err
    assert "--format hub writes a folder" in err and "Traceback" not in err
    assert (tmp_path / "g.onnx").read_bytes() == b"not a folder"
