"""pmf.parallel.process is the one home of the launcher's numbers: rank and world size come from torchrun's
environment before a process group exists (and from the group after), and no other module reads them."""

import re
from pathlib import Path

import pytest

from pmf.parallel import process as D

SRC = Path(__file__).resolve().parents[2] / "src" / "pmf"
LAUNCHER = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def launcher_env(monkeypatch):
    for name in LAUNCHER:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_plain_process_is_rank_0_of_1(launcher_env):
    assert (D.rank(), D.world_size(), D.local_rank(), D.local_world_size(), D.is_main_process()) == (0, 1, 0, 1, True)


def test_the_launchers_numbers_before_any_process_group(launcher_env):
    launcher_env.setenv("RANK", "5")
    launcher_env.setenv("WORLD_SIZE", "8")
    launcher_env.setenv("LOCAL_RANK", "1")
    assert (D.rank(), D.world_size(), D.local_rank(), D.is_main_process()) == (5, 8, 1, False)
    assert D.local_world_size() == 8  # one node unless the launcher says otherwise
    launcher_env.setenv("LOCAL_WORLD_SIZE", "4")
    assert D.local_world_size() == 4
    launcher_env.setenv("RANK", "0")
    assert D.is_main_process()


def test_no_other_module_reads_the_launchers_environment():
    names = re.compile(r"[\"'](" + "|".join(LAUNCHER) + r")[\"']")
    hits = [str(p.relative_to(SRC)) for p in sorted(SRC.rglob("*.py"))
            if "environ" in (text := p.read_text()) and names.search(text)]
    assert hits == ["parallel/process.py"], hits


def test_the_ddp_wrapper_is_the_model_itself_in_one_process():
    """(tests/parallel/test_reduction.py checks its ordered hook's sums under 4 gloo processes)"""
    import torch

    model = torch.nn.Linear(2, 2)
    assert D.wrap_ddp(model, D.DistInfo(), ordered=True) is model
