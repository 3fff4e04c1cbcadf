"""The names of the folders the commands write have one home (pmf.folder_layout): a training run writes where
RunFolder says, a resume reads there, and no other module spells a name of the layout."""

import ast
import json

import pytest

from helpers import PACKAGE, tiny_config, written_again
from pmf.folder_layout import RunFolder, SampleFolder, resume_given
from pmf.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_training_run_writes_where_its_run_folder_says(tmp_path):
    summary = train(tiny_config(tmp_path / "run", steps=3), progress=False)
    folder = RunFolder(tmp_path / "run")
    assert folder.config.is_file() and folder.metrics.is_file() and folder.grid(3).is_file()
    assert json.loads(folder.summary.read_text())["last_checkpoint"] == summary["last_checkpoint"]
    assert RunFolder.of_checkpoint(summary["last_checkpoint"]) == folder
    assert folder.checkpoints in folder.outputs and folder.metrics in folder.outputs
    assert SampleFolder(tmp_path).own_files == (tmp_path / "grid.png", tmp_path / "samples.npz",
                                                tmp_path / "sample_settings.json")


def test_what_resume_values_ask():
    assert [resume_given(v) for v in (None, "", "none", "auto", "runs/a")] == [False, False, False, True, True]


# Names that only a folder of the layout has, and the names that other folders share (torch.hub's checkpoints/,
# a hub folder's config.json) and that are checked only where a path is joined
UNIQUE = {"metrics.jsonl", "summary.json", "data.json", "wandb_id", "demo_metrics.json", "samples.npz",
          "sample_settings.json", "tensorboard"}
JOINED = {"checkpoints", "samples", "config.json", "grid.png"}


def test_no_module_spells_a_name_of_the_layout():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "folder_layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in UNIQUE:
                found.append(f"{path.name}:{node.lineno} {node.value}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                    and node.right.value in JOINED and "get_dir" not in ast.unparse(node.left):  # torch.hub's cache
                found.append(f"{path.name}:{node.lineno} {node.right.value}")
    assert not found, found
    assert not written_again(r'resume (not )?in \(None', home="folder_layout.py")  # "resume not given"
