"""Atomic checkpoint writes (a process killed in the middle of a save), keep-last-K, and EMA export."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pmf.checkpoints.load import (
    export_ema,
    latest_checkpoint,
    list_checkpoints,
    load_model,
    read_file,
    save_atomic,
    save_training_checkpoint,
)
from pmf.checkpoints.schema import TrainingCheckpoint
from pmf.errors import CheckpointError
from pmf.sampling import sample

CHILD = textwrap.dedent("""
    import os, signal, sys, torch
    import pmf.checkpoints.load as C
    sys.path.insert(0, {tests!r})
    from helpers import tiny_config
    from pmf.training.loop import train

    real_save, calls = torch.save, {{"n": 0}}

    def dying_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 6): write half of it, then die
            real_save(obj, f, *a, **k)
            f.flush()
            f.truncate(f.tell() // 2)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)

    torch.save = dying_save
    train(tiny_config({out!r}), progress=False)
""")


def test_killed_during_save_leaves_previous_checkpoint_and_resume_works(tmp_path):
    from helpers import losses, tiny_config
    from pmf.training.loop import train

    out = tmp_path / "run"
    code = CHILD.format(tests=os.path.dirname(os.path.dirname(__file__)), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL in the middle of the step-6 save
    ckpt_dir = out / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpt_dir)] == [3]
    assert any(p.name.startswith(".step_00000006.pt.tmp") for p in ckpt_dir.iterdir())  # the torn write
    assert latest_checkpoint(ckpt_dir).name == "step_00000003.pt"
    read_file(ckpt_dir / "step_00000003.pt")  # intact
    before = losses(out)
    assert [r[0] for r in before] == [1, 2, 3, 4, 5, 6]  # the killed run logged steps 4-6 but did not save them
    train(tiny_config(out), resume="auto", progress=False)
    assert losses(out) == before  # steps 4-6 replayed exactly from the step-3 checkpoint


def test_save_atomic_replaces_and_keep_last(tmp_path):
    p = save_atomic({"a": torch.ones(2)}, tmp_path / "x.pt")
    save_atomic({"a": torch.zeros(2)}, p)
    assert torch.equal(torch.load(p)["a"], torch.zeros(2)) and [q.name for q in tmp_path.iterdir()] == ["x.pt"]
    for step in (1, 2, 3, 4):
        save_training_checkpoint(tmp_path / "c", TrainingCheckpoint(step, {}, {"steps": step}, model={}), keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path / "c")] == [3, 4]
    assert sorted(q.name for q in (tmp_path / "c").iterdir()) == ["step_00000003.json", "step_00000003.pt",
                                                                   "step_00000004.json", "step_00000004.pt"]


def test_export_ema_to_release_and_safetensors(tmp_path):
    from helpers import tiny_config
    from pmf.training.loop import train

    train(tiny_config(tmp_path / "run", steps=3), progress=False)
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    ema = load_model(ckpt, ema="hl0.05")
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4)
    ref = sample(ema, noise, labels, omega=2.0, t_min=0.1, t_max=0.8)
    st = export_ema(ckpt, tmp_path / "m.safetensors", ema="hl0.05")
    rel = export_ema(ckpt, tmp_path / "m.pt", ema="hl0.05")
    assert all(k.startswith("net.") for k in torch.load(rel, weights_only=True))
    for model in (load_model(st), load_model(rel)):
        assert not model.has_v_head
        torch.testing.assert_close(sample(model, noise, labels, omega=2.0, t_min=0.1, t_max=0.8), ref)
    raw = load_model(export_ema(ckpt, tmp_path / "raw.safetensors", ema="raw"))
    assert not torch.equal(raw.u_final_layer.linear.weight, ema.u_final_layer.linear.weight)


# ---- what a newcomer meets when loading ------------------------------------------------------------------------

def _run_folder(tmp_path):
    from helpers import training_checkpoint

    return training_checkpoint(tmp_path / "runs" / "demo")


def test_load_checkpoint_takes_a_run_folder_as_the_cli(tmp_path):
    import pmf

    newest = _run_folder(tmp_path)
    for folder in (tmp_path / "runs" / "demo", tmp_path / "runs" / "demo" / "checkpoints"):
        loaded = pmf.load_checkpoint(folder)
        assert loaded.ema == pmf.load_checkpoint(newest).ema == "hl0.05"
        for a, b in zip(loaded.model.state_dict().values(), load_model(newest).state_dict().values()):
            assert torch.equal(a, b)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no training checkpoint found in the folder"):
        pmf.load_checkpoint(empty)


def test_a_foreign_pickle_is_refused_without_advising_weights_only_false(tmp_path):
    import argparse

    path = tmp_path / "foreign.pt"
    torch.save({"args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError) as err:
        read_file(path)
    msg = str(err.value)
    assert "not a checkpoint this package reads" in msg and "argparse.Namespace" in msg
    assert "weights_only" not in msg and "\n" not in msg and msg.endswith("in full")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint: it starts with b'not a '") as err:
        read_file(tmp_path / "notes.txt")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """huggingface_hub with an empty cache, not offline, and an endpoint that refuses connections."""
    constants = pytest.importorskip("huggingface_hub.constants")
    import socket

    with socket.socket() as s:  # a port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return constants, tmp_path / "hub"


def test_hub_name_without_a_network_fails_fast_with_an_offline_hint(empty_hub, monkeypatch):
    import time

    from pmf.checkpoints.load import resolve

    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="cannot be reached .*offline\\?") as err:
        resolve("hf:owner/repo/model.pt")
    assert time.perf_counter() - t0 < 5 and "\n" not in str(err.value)
    monkeypatch.setattr(empty_hub[0], "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        resolve("hf:owner/repo/model.pt")


def test_hub_name_in_the_cache_needs_no_network(empty_hub):
    from pmf.checkpoints.load import resolve

    commit = "0" * 40  # the cache layout of huggingface_hub: refs/main names the snapshot folder
    repo = empty_hub[1] / "models--owner--repo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.pt").write_bytes(b"weights")
    assert resolve("hf:owner/repo/model.pt").read_bytes() == b"weights"
