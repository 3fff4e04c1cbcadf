"""The commands share their pieces through the underscore modules of ``pmf.commands`` and never import one
another; loading an untrained model for ``--checkpoint random`` leaves the caller's random state alone."""

import ast
from argparse import Namespace
from pathlib import Path

import torch

COMMANDS = Path(__file__).resolve().parents[2] / "src" / "pmf" / "commands"


def test_no_command_imports_another():
    commands = {p.stem for p in COMMANDS.glob("*.py") if not p.stem.startswith("_")}
    assert {"train", "demo", "sample", "eval", "export_generator"} <= commands
    for path in COMMANDS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = {node.module} if node.module else {a.name for a in node.names}
                assert not names & commands, f"{path.name} imports {names & commands}"


def test_a_random_model_has_the_seeds_weights_and_leaves_the_global_generator_alone():
    from pmf.commands._args import load_for_sampling
    from pmf.nn.model import build_model

    torch.manual_seed(123)
    before = torch.get_rng_state()
    loaded = load_for_sampling(Namespace(checkpoint="random", arch="pMF-Tiny/4", seed=5, ema=None), "cpu")
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    want = build_model("pMF-Tiny/4").state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.model.state_dict().items())
