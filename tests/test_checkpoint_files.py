"""Atomic checkpoint writes (a process killed in the middle of a save), keep-last-K, and EMA export."""

import os
import subprocess
import sys
import textwrap

import torch

from pmf.checkpoint import (
    export_ema,
    latest_checkpoint,
    list_checkpoints,
    load_model,
    read_file,
    save_atomic,
    save_training_checkpoint,
)
from pmf.sampling import sample

CHILD = textwrap.dedent("""
    import os, signal, sys, torch
    import pmf.checkpoint as C
    sys.path.insert(0, {tests!r})
    from test_train import tiny_config
    from pmf.train import train

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
    from pmf.train import train
    from test_train import losses, tiny_config

    out = tmp_path / "run"
    code = CHILD.format(tests=os.path.dirname(__file__), out=str(out))
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
        save_training_checkpoint(tmp_path / "c", step, {"model": {}}, {"steps": step}, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path / "c")] == [3, 4]
    assert sorted(q.name for q in (tmp_path / "c").iterdir()) == ["step_00000003.json", "step_00000003.pt",
                                                                   "step_00000004.json", "step_00000004.pt"]


def test_export_ema_to_release_and_safetensors(tmp_path):
    from pmf.train import train
    from test_train import tiny_config

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
