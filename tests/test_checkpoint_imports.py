"""The import graph of the package (docs/architecture.md): no module imports itself back through others, and no
module imports one of a higher layer. Reading a model from any training checkpoint (a single file or a sharded
DCP folder) needs no optimiser, EMA, training config or trainer."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).resolve().parents[1] / "src"
# The layers, lowest first: a module may import its own layer and those below it. A module's layer is that of
# the longest prefix listed (``pmf.training.loop`` is "trainer", the rest of ``pmf.training`` "training").
LAYERS = {
    "base": ("pmf", "pmf.errors", "pmf.extras", "pmf.seeds", "pmf.images", "pmf.vocabulary", "pmf.model_configs",
             "pmf.sampling_setting", "pmf.class_choice", "pmf.released_models", "pmf.folder_layout", "pmf.ema_choice"),
    "nn": ("pmf.nn", "pmf.parallel"),  # the network; processes and sharding (imports only the network's layers)
    "math": ("pmf.objective", "pmf.sampling", "pmf.toy", "pmf.perceptual"),
    "checkpoints": ("pmf.checkpoints",),
    "data": ("pmf.data",),
    "evaluation and export": ("pmf.evaluation", "pmf.export", "pmf.diffusers"),
    "samplers": ("pmf.sampler_loading",),  # any sampler spec (a torch checkpoint or an ONNX file) as one object
    # fd_config is the --fd-* section of the training config (it imports only the base layer);
    # sharded_muon is the optimiser's Muon step on sharded matrices.
    "training": ("pmf.training", "pmf.posttrain.fd_config", "pmf.parallel.sharded_muon"),
    "posttrain": ("pmf.posttrain",),
    "trainer": ("pmf.training.loop", "pmf.training.build", "pmf.training.saver", "pmf.training.step"),
    "serve": ("pmf.serve",),
    "commands": ("pmf.commands", "pmf.cli"),
}
# The arrows that run up, each imported inside the one function that needs it:
UPWARD = {
    # PMFDiT.save_pretrained / from_pretrained / push_to_hub, the hub mixin's methods on the model class
    ("pmf.nn.model", "pmf.checkpoints.hub"),
}
TRAINER = ("pmf.training.optim", "pmf.training.ema", "pmf.training.config", "pmf.training.loop", "pmf.training.state",
           "pmf.training.saver", "pmf.training.step")


def module_graph() -> dict[str, set[str]]:
    """Every import between the package's modules, those inside functions included."""
    files = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                for alias in node.names:
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def test_no_module_imports_itself_back():
    graph = module_graph()
    assert "pmf.checkpoints.sharded" in graph["pmf.checkpoints.load"]  # the walk sees the imports

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    circles = sorted(m for m in graph if reaches(m, m))
    assert not circles, circles


def layer_of(module: str) -> int:
    best = max(((len(p), i) for i, prefixes in enumerate(LAYERS.values()) for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    assert best is not None, f"{module} is in no layer of LAYERS"
    return best[1]


def test_every_module_has_a_layer_and_imports_none_above_it():
    graph, names = module_graph(), list(LAYERS)
    for module in graph:
        layer_of(module)
    up = {(a, b) for a, edges in graph.items() for b in edges if layer_of(b) > layer_of(a)}
    assert up == UPWARD, "\n".join(f"{a} ({names[layer_of(a)]}) imports {b} ({names[layer_of(b)]})"
                                    for a, b in sorted(up ^ UPWARD))
    assert layer_of("pmf.training.loop") > layer_of("pmf.posttrain.fd_objective") > layer_of("pmf.training.optim")


def test_the_upward_arrows_are_imported_inside_functions():
    for a, b in UPWARD:
        path = SRC.joinpath(*a.split(".")).with_suffix(".py")
        top = ast.parse(path.read_text()).body
        names = {n.module for n in top if isinstance(n, ast.ImportFrom)} | {
            a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        assert not any(b.endswith(str(n).lstrip(".")) for n in names if n), (a, b)


def loaded_modules(spec: Path) -> list[str]:
    code = ("import json, sys, torch, pmf; m = pmf.load_checkpoint(sys.argv[1]).model; "
            f"print(json.dumps([n for n in {list(TRAINER)!r} if n in sys.modules]))")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(spec)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_model_loads_from_any_training_checkpoint_without_the_trainer(tmp_path):
    import pmf
    from pmf.checkpoints.sharded import ShardedSaver
    from pmf.training.ema import EMASet
    from pmf.training.loop import train
    from pmf.training.optim import build_optimizer
    from pmf.training.recipes import recipe
    from pmf.training.state import folder_state, optimizer_rule

    cfg = recipe("tiny")
    cfg.steps, cfg.ckpt_every, cfg.sample.every, cfg.out = 1, 1, 0, str(tmp_path / "run")
    file = Path(train(cfg, progress=False)["last_checkpoint"])
    assert "optimizer" in torch.load(file, weights_only=True)  # a real training checkpoint

    model = pmf.build_model("pMF-Tiny/4")
    optimizer, emas = build_optimizer(model, cfg.optim), EMASet(model, cfg.ema, cfg.batch_size)
    meta = dict(step=3, model_config=model.config.to_dict(), train_config=cfg.to_dict(), emas=emas.names,
                world_size=1, parallel="fsdp", optimizer_rule=optimizer_rule(optimizer))
    folder = ShardedSaver(tmp_path / "dcp", keep_last=2).save(3, folder_state(model, optimizer, emas), meta)
    loaded = pmf.load_checkpoint(folder, ema="raw").model
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))

    for spec in (file, folder):
        assert loaded_modules(spec) == [], spec


@pytest.mark.parametrize("module", ["pmf", "pmf.sampling", "pmf.serve"])
def test_sampling_and_serving_import_no_trainer_and_no_dcp(module):
    """The package's face is lazy: importing the sampler or the server loads no trainer module, no
    torch.distributed.checkpoint and no checkpoint reader until a name that needs them is used."""
    code = (f"import json, sys, {module}; print(json.dumps(sorted(n for n in sys.modules if n.startswith('pmf') or "
            "n == 'torch.distributed.checkpoint')))")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert module in loaded
    assert not loaded & {*TRAINER, "torch.distributed.checkpoint", "pmf.checkpoints.sharded", "pmf.parallel.process"}
    if module == "pmf":
        assert loaded == {"pmf"}


def test_the_lazy_face_gives_the_public_names():
    import pmf

    assert pmf.PMFDiT.__module__ == "pmf.nn.model" and callable(pmf.load_checkpoint)
    assert set(pmf.__all__) <= set(dir(pmf)) and pmf.__version__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pmf.nope  # noqa: B018
