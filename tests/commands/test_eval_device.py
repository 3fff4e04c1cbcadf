"""``pmf eval`` lets the sampler choose its device: an ``.onnx`` file runs where onnxruntime runs (the CPU) even
on a machine where CUDA is visible, with no ``--device cpu``."""

import json

import pytest
import torch

from helpers import random_model, recorded_checkpoint
from pmf.cli import main
from pmf.sampler_loading import sampler_device

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_sampler_device_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sampler_device("g.onnx") == "cpu" and sampler_device("ck.pt") == "cuda"
    assert sampler_device("g.onnx", "cuda:1") == "cuda:1" and sampler_device("ck.pt", "cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sampler_device("ck.pt") == "cpu"


def test_eval_of_an_onnx_file_runs_on_the_cpu_when_cuda_is_visible(tmp_path, monkeypatch, fake_offline):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ckpt = recorded_checkpoint(tmp_path / "ck.pt", random_model(seed=1))
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "g.onnx")]) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as the command can tell
    assert main(["eval", "--checkpoint", str(tmp_path / "g.onnx"), "--offline", "--num-images", "4", "--batch-size",
                 "4", "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["device"] == "cpu" and len(fake_offline) == 1 and fake_offline[0].shape[0] == 4
