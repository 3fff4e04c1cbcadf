"""The training-checkpoint schema (pmf.checkpoints.schema): a round trip through a file's payload and a DCP
folder's meta; a payload built the way files were written before the schema still loads and resumes to the bit;
the trainer's file and a DCP folder rewritten as one file (to_single_file) carry the same step_X.json and the
same fields."""

import dataclasses
import json

import pytest
import torch

from helpers import tiny_config
from pmf.checkpoints.files import FORMAT
from pmf.checkpoints.load import load_checkpoint, read_file
from pmf.checkpoints.schema import TrainingCheckpoint, sidecar_of
from pmf.errors import CheckpointError
from pmf.model_configs import model_config
from pmf.parallel.process import setup
from pmf.training.build import build, load_resume
from pmf.training.config import OptimConfig
from pmf.training.saver import Checkpointer
from pmf.training.state import file_state, restore_file, to_single_file

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")]

NAMES = ["cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay", "kiwi", "lynx"]


def _trained(out, seed: int = 3):
    """(config, model config, parts after two AdamW steps with their EMAs updated)."""
    cfg = tiny_config(out, optim=OptimConfig(name="adamw", lr=1e-2), seed=seed)
    mcfg = model_config(cfg.arch, **cfg.model_overrides)
    parts = build(cfg, mcfg, setup("cpu"))
    gen = torch.Generator().manual_seed(0)
    for step in (1, 2):
        for p in parts.model.parameters():
            p.grad = 0.1 * torch.randn(p.shape, generator=gen)
        parts.optimizer.step()
        parts.emas.update(parts.model, step)
    parts.optimizer.zero_grad(set_to_none=True)
    return cfg, mcfg, parts


def _equal(a, b) -> bool:
    """Nested dictionaries / lists of tensors and plain values, equal to the bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_payload_and_meta_round_trip(tmp_path):
    cfg, mcfg, parts = _trained(tmp_path)
    ckpt = TrainingCheckpoint(2, mcfg.to_dict(), cfg.to_dict(), **file_state(parts.model, parts.optimizer, parts.emas),
                              class_names=NAMES, world_size=1, fd_stats={"fixed": {"mu": torch.arange(3.0)}})
    payload = ckpt.to_payload()
    assert payload["format"] == FORMAT and payload["step"] == 2 and "emas" not in payload and "sharded" not in payload
    torch.save(payload, tmp_path / "c.pt")
    back = TrainingCheckpoint.from_payload(read_file(tmp_path / "c.pt"))
    assert all(_equal(getattr(back, f.name), getattr(ckpt, f.name)) for f in dataclasses.fields(ckpt))
    assert back.ema_names == list(parts.emas.names) and back.resumable
    meta = json.loads(json.dumps(dataclasses.replace(ckpt, parallel="fsdp", optimizer_rule="adamw").to_meta()))
    assert not {"model", "optimizer", "ema", "fd_stats"} & meta.keys() and meta["emas"] == back.ema_names
    folder = TrainingCheckpoint.from_meta(meta)
    assert folder.sharded and folder.resumable and folder.model is None and folder.ema_names == back.ema_names
    assert (folder.step, folder.model_config, folder.train_config, folder.class_names, folder.parallel) == \
        (2, ckpt.model_config, json.loads(json.dumps(ckpt.train_config)), NAMES, "fsdp")  # JSON: lists for tuples
    with pytest.raises(CheckpointError, match="not a pixel-meanflow"):
        TrainingCheckpoint.from_payload({"model": {}})


def test_a_payload_written_the_old_way_loads_and_resumes(tmp_path):
    cfg, mcfg, parts = _trained(tmp_path / "a")
    state = file_state(parts.model, parts.optimizer, parts.emas)
    # the dictionary the trainer wrote before the schema: every key by hand, None where unknown, no sidecar
    old = dict(format=FORMAT, step=2, model_config=mcfg.to_dict(), **state, train_config=cfg.to_dict(),
               world_size=1, class_names=None)
    path = tmp_path / "old" / "step_00000002.pt"
    path.parent.mkdir()
    torch.save(old, path)
    resumed = load_resume(path, mcfg, cfg)
    assert isinstance(resumed, TrainingCheckpoint) and resumed.step == 2 and resumed.class_names is None
    _, _, fresh = _trained(tmp_path / "b", seed=4)  # other weights and optimiser state
    restore_file(resumed, fresh.model, fresh.optimizer, fresh.emas)
    assert _equal(file_state(fresh.model, fresh.optimizer, fresh.emas), state)
    ema = parts.emas.names[0]
    loaded = load_checkpoint(path, ema=ema)
    assert all(torch.equal(v, state["ema"][ema][k]) for k, v in loaded.model.state_dict().items())


def test_the_trainer_file_and_a_folder_as_one_file_have_the_same_sidecar_and_fields(tmp_path):
    cfg, mcfg, parts = _trained(tmp_path)
    info = setup("cpu")
    written = Checkpointer(cfg, mcfg, parts, info, NAMES).save(2)
    file = tmp_path / "file" / written.name
    file.parent.mkdir()
    written.rename(file)
    sidecar_of(written).rename(sidecar_of(file))
    # the same run's state written as a DCP folder (plain tensors in one process), then rewritten as one file
    folder = Checkpointer(cfg, mcfg, dataclasses.replace(parts, sharded=True), info, NAMES).save(2)
    assert folder.is_dir() and json.loads((folder / "meta.json").read_text())["class_names"] == NAMES
    single = to_single_file(folder, tmp_path / "single" / "step_00000002.pt")
    assert sidecar_of(single).read_text() == sidecar_of(file).read_text()
    assert json.loads(sidecar_of(file).read_text()) == json.loads(json.dumps(cfg.to_dict()))
    a, b = TrainingCheckpoint.from_payload(read_file(file)), TrainingCheckpoint.from_payload(read_file(single))
    assert all(_equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
