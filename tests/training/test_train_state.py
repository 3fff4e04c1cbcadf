"""The training state through torch's state-dict API (``pmf.training.state``): restoring a file or a DCP folder
takes every saved tensor (step counts included) for Muon and AdamW; a checkpoint written before the first step
records no optimiser state and restores none; a file in the older layout (``optimizer.state_dict()``, integer
indices) resumes to the bit; a plain run's file resumes under FSDP2 in one process, whose DCP folder, rewritten
as one file, resumes in a plain run, all to the bit of an uninterrupted run."""

import pytest
import torch

from helpers import losses, tiny_config
from pmf.checkpoints.load import load_model, read_file
from pmf.checkpoints.sharded import ShardedSaver
from pmf.model_configs import model_config
from pmf.parallel.process import cleanup, setup
from pmf.training.build import build
from pmf.training.config import OptimConfig
from pmf.training.loop import train
from pmf.training.state import file_state, folder_state, optimizer_rule, restore_file, restore_folder, to_single_file

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")]  # ShardedSaver alone


def _parts(out, optimizer: str = "muon", seed: int = 3):
    cfg = tiny_config(out, optim=OptimConfig(name=optimizer, lr=1e-2), seed=seed)
    return cfg, build(cfg, model_config(cfg.arch, **cfg.model_overrides), setup("cpu"))


def _trained(out, optimizer: str, steps: int = 2):
    """Parts after ``steps`` optimiser steps on random gradients, with their EMAs updated."""
    cfg, parts = _parts(out, optimizer)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        for p in parts.model.parameters():
            p.grad = 0.1 * torch.randn(p.shape, generator=gen)
        parts.optimizer.step()
        parts.emas.update(parts.model, step)
    parts.optimizer.zero_grad(set_to_none=True)
    return cfg, parts


def _save_folder(directory, cfg, parts, step: int = 2):
    meta = dict(step=step, model_config=parts.model.config.to_dict(), train_config=cfg.to_dict(),
                emas=parts.emas.names, world_size=1, parallel="fsdp", optimizer_rule=optimizer_rule(parts.optimizer))
    return ShardedSaver(directory, keep_last=2).save(step, folder_state(parts.model, parts.optimizer, parts.emas),
                                                     meta)


def assert_same_state(a: dict, b: dict) -> None:
    """Two ``file_state`` dictionaries hold equal tensors (dtypes too) under the same names."""
    assert a["model"].keys() == b["model"].keys() and a["ema"].keys() == b["ema"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for name, weights in a["ema"].items():
        assert all(torch.equal(v, b["ema"][name][k]) for k, v in weights.items()), name
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for param, state in sa.items():
        assert state.keys() == sb[param].keys(), param
        for k, v in state.items():
            assert v.dtype == sb[param][k].dtype and torch.equal(v, sb[param][k]), (param, k)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_a_file_and_a_folder_restore_every_tensor(tmp_path, optimizer):
    cfg, parts = _trained(tmp_path / "a", optimizer)
    saved = file_state(parts.model, parts.optimizer, parts.emas)
    assert {float(s["step"]) for s in saved["optimizer"]["state"].values()} == {2.0}
    assert len(saved["optimizer"]["state"]) == len(list(parts.model.parameters()))
    folder = _save_folder(tmp_path / "dcp", cfg, parts)
    torch.save(saved, tmp_path / "file.pt")
    for restore in ("file", "folder"):
        _, fresh = _parts(tmp_path / restore, optimizer, seed=4)  # other initial weights
        if restore == "file":
            restore_file(read_file(tmp_path / "file.pt"), fresh.model, fresh.optimizer, fresh.emas)
        else:
            restore_folder(folder, fresh.model, fresh.optimizer, fresh.emas)
        # the step counts are the saved ones, not those of the zero step that made the state to read into
        assert_same_state(file_state(fresh.model, fresh.optimizer, fresh.emas), saved)


def test_a_checkpoint_before_the_first_step_records_no_optimiser_state(tmp_path):
    cfg, parts = _parts(tmp_path / "a")
    weights = {k: v.clone() for k, v in parts.model.state_dict().items()}
    saved = file_state(parts.model, parts.optimizer, parts.emas)
    assert saved["optimizer"]["state"] == {} and not parts.optimizer.state
    folder = _save_folder(tmp_path / "dcp", cfg, parts, step=0)
    assert not parts.optimizer.state
    assert all(torch.equal(v, weights[k]) for k, v in parts.model.state_dict().items())  # lr 0: nothing moved
    _, trained = _trained(tmp_path / "b", "muon")
    restore_file(saved, trained.model, trained.optimizer, trained.emas)
    assert not trained.optimizer.state
    _, trained = _trained(tmp_path / "c", "muon")
    restore_folder(folder, trained.model, trained.optimizer, trained.emas)
    assert not trained.optimizer.state
    assert all(torch.equal(v, weights[k]) for k, v in trained.model.state_dict().items())


def _state_at(path) -> dict:
    return {k: read_file(path)[k] for k in ("model", "ema", "optimizer")}


def test_a_file_in_the_older_layout_resumes_to_the_bit(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(full, sample=dict(every=0)), progress=False)
    train(tiny_config(part, steps=3, sample=dict(every=0)), progress=False)
    path = part / "checkpoints" / "step_00000003.pt"
    obj = read_file(path)
    _, parts = _parts(tmp_path / "x")
    restore_file(read_file(path), parts.model, parts.optimizer, parts.emas)
    obj["optimizer"] = parts.optimizer.state_dict()  # what a plain run wrote before: integer indices
    assert all(isinstance(k, int) for k in obj["optimizer"]["state"]) and obj["optimizer"]["state"]
    torch.save(obj, path)
    train(tiny_config(part, sample=dict(every=0)), resume="auto", progress=False)
    assert losses(full) == losses(part)
    assert_same_state(_state_at(part / "checkpoints" / "step_00000006.pt"),
                      _state_at(full / "checkpoints" / "step_00000006.pt"))


def test_a_file_resumes_under_fsdp_and_its_folder_as_one_file_in_a_plain_run(tmp_path):
    """plain 0-3 (a file), FSDP2 in one process 3-6 (a DCP folder), that folder as one file, plain 6-9: the
    losses and the states at 6 and 9 equal those of one plain run of 9 steps."""
    full, chain = tmp_path / "full", tmp_path / "chain"
    train(tiny_config(full, steps=9, sample=dict(every=0)), progress=False)
    train(tiny_config(chain, steps=3, sample=dict(every=0)), progress=False)
    try:
        train(tiny_config(chain, steps=6, parallel="fsdp", sample=dict(every=0)), resume="auto", progress=False)
    finally:
        cleanup()
    folder = chain / "checkpoints" / "step_00000006"
    assert folder.is_dir()
    single = to_single_file(folder, tmp_path / "single" / "checkpoints" / "step_00000006.pt")
    assert_same_state(_state_at(single), _state_at(full / "checkpoints" / "step_00000006.pt"))
    assert all(torch.equal(a, b) for a, b in zip(load_model(folder, ema="d0.9").state_dict().values(),
                                                 load_model(single, ema="d0.9").state_dict().values()))
    train(tiny_config(tmp_path / "single", steps=9, sample=dict(every=0)), resume="auto", progress=False)
    assert_same_state(_state_at(tmp_path / "single" / "checkpoints" / "step_00000009.pt"),
                      _state_at(full / "checkpoints" / "step_00000009.pt"))
    assert losses(full)[:6] == losses(chain) and losses(full)[6:] == losses(tmp_path / "single")
