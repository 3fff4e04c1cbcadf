"""ONNX export (pmf.export.onnx_export) and its onnxruntime path (pmf.export.onnx_runtime) in pmf sample, pmf serve and
pmf eval: the
same images as the torch sampler for the same seeds, and the metadata that says how to sample the file."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch

try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
except ImportError:
    pytest.skip("ONNX tests need pip install 'pixel-meanflow[onnx]'", allow_module_level=True)

import pmf  # noqa: E402
from helpers import network_args, random_model  # noqa: E402
from pmf.cli import main  # noqa: E402
from pmf.export.onnx_export import export_onnx  # noqa: E402
from pmf.export.onnx_runtime import OnnxGenerator, read_metadata  # noqa: E402
from pmf.sampling import SamplingSetting, image_noise, sample  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = [f"digit {i}" for i in range(10)]
RECIPE = {"omega": 2.0, "t_min": 0.1, "t_max": 0.9}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A training checkpoint with class names and a recipe setting, and its 1- and 2-step exports through the
    CLI (which names the steps of the file in the setting it prints)."""
    folder = tmp_path_factory.mktemp("onnx")
    model = random_model(seed=1)
    sd = model.state_dict()
    ckpt = folder / "ck.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd, "ema": {"d0.9": sd},
                "train_config": {"arch": "pMF-Tiny/4", "sample": RECIPE}, "class_names": NAMES}, ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(folder / "g.onnx")]) == 0
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["export", "--checkpoint", str(ckpt), "--out", str(folder / "g2.onnx"), "--steps", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "exporting the 2-step generator; setting: omega 2, interval [0.1, 0.9], 2 step(s)" in out.getvalue()
    return {"ckpt": ckpt, "one": folder / "g.onnx", "two": folder / "g2.onnx", "model": model}


@pytest.mark.parametrize("steps", [1, 2])
def test_onnx_equals_the_torch_sampler_at_any_batch(files, steps):
    gen = OnnxGenerator(files["one" if steps == 1 else "two"])
    model = files["model"]
    for batch in (1, 5):  # exported at batch 2: the batch is dynamic
        eps = image_noise(range(batch), (3, 32, 32), seed=batch)
        labels = torch.arange(batch) % 10
        omega = torch.linspace(1.0, 4.0, batch)  # per-image guidance is an input, not a constant of the graph
        got = gen(eps, labels, omega, torch.full((batch,), 0.1), torch.full((batch,), 0.8))
        want = sample(model, eps, labels, steps=steps, omega=omega, t_min=0.1, t_max=0.8)
        assert got.shape == want.shape and want.abs().max() > 0.1
        assert (got - want).abs().max() <= 1e-4


def test_the_graph_has_one_node_per_norm_rope_and_attention(files):
    """Opset 23: RMSNorm, RoPE and attention as single nodes, attention on the token layout (no head
    transposes), one MatMul per linear map."""
    graph = onnx.load(str(files["one"])).graph
    ops = [n.op_type for n in graph.node]
    depth = files["model"].config.depth
    assert ops.count("RMSNormalization") == 4 * depth + 1  # per block: two norms and q, k norms; the final norm
    assert ops.count("Attention") == depth and "Softmax" not in ops
    assert ops.count("RotaryEmbedding") == 2 * depth  # q and k
    assert ops.count("Transpose") == 2  # patches to tokens, tokens to the image; none per block
    attention = next(n for n in graph.node if n.op_type == "Attention")
    attributes = {a.name: a.i for a in attention.attribute}
    assert attributes["q_num_heads"] == attributes["kv_num_heads"] == 4  # the 3-D form
    weights = {i.name for i in graph.initializer}
    products = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert len(products) == 7 * depth + 1  # per block: q, k, v, out, w1, w3, w2; the final layer's map


def test_pad_mlp_hidden_adds_zero_units_that_change_nothing(tmp_path):
    """A SwiGLU width that is a multiple of 1024 gets 16 zero units (pmf.export.onnx_export.pad_mlp_hidden); the
    network's outputs stay the same numbers, in torch and in the exported file. Other widths are left alone."""
    from pmf.checkpoints.load import LoadedCheckpoint
    from pmf.export.onnx_export import MLP_PAD, pad_mlp_hidden

    model = random_model(seed=3)
    assert pad_mlp_hidden(model) == 0  # width 170
    model = random_model(seed=0, hidden_size=384, num_heads=4, v_head=False)  # width 1024
    path = export_onnx(LoadedCheckpoint(model, None, None, SamplingSetting()), tmp_path / "wide.onnx")
    z = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels, omega = torch.tensor([1, 7]), torch.full((2,), 2.0)
    exported = OnnxGenerator(path)(z, labels, omega, torch.full((2,), 0.1), torch.full((2,), 0.8))
    want = sample(model, z, labels, steps=1, omega=omega, t_min=0.1, t_max=0.8)
    assert (exported - want).abs().max() <= 1e-4
    weights = {i.name: i.dims for i in onnx.load(str(path)).graph.initializer}
    assert sorted({tuple(weights[n.input[1]]) for n in onnx.load(str(path)).graph.node
                   if n.op_type == "MatMul" and weights.get(n.input[1], [0])[0] == 1024 + MLP_PAD}) == [(1040, 384)]
    args = network_args(z, [1, 7])
    with torch.no_grad():
        before = model(*args, heads="u")[0]
        assert pad_mlp_hidden(model) == model.config.depth
        after = model(*args, heads="u")[0]
    mlp = model.shared_blocks[0].mlp
    assert mlp.w1.weight.shape == mlp.w3.weight.shape == (1024 + MLP_PAD, 384) and mlp.w2.weight.shape == (384, 1040)
    assert before.abs().max() > 0.1 and (after - before).abs().max() <= 1e-6


def test_an_onnxruntime_without_opset_23_is_told_what_to_install(files, monkeypatch):
    def old_runtime(*args, **kwargs):
        raise RuntimeError("ONNX Runtime only *guarantees* support for models stamped with official released onnx "
                           "opset versions. Current official support for domain ai.onnx is till opset 22.")

    monkeypatch.setattr(onnxruntime, "InferenceSession", old_runtime)
    with pytest.raises(pmf.errors.PMFError, match=r"at opset 23\): pip install 'onnxruntime>=1.23'"):
        OnnxGenerator(files["one"])


def test_metadata_round_trip(files):
    loaded = pmf.load_checkpoint(files["ckpt"])
    for key, steps in (("one", 1), ("two", 2)):
        meta = read_metadata(files[key])
        gen = OnnxGenerator(files[key])
        assert gen.setting == SamplingSetting.from_dict(loaded.setting.to_dict(), steps=steps)
        assert gen.setting.omega == 2.0 and gen.setting.ema == "d0.9" and gen.steps == steps
        assert gen.class_names == NAMES and gen.preset == "pMF-Tiny/4"
        assert meta["image_size"] == 32 and meta["channels"] == 3 and meta["num_classes"] == 10
        assert gen.config == loaded.model.config.__class__.from_dict({**loaded.model.config.to_dict(),
                                                                       "v_head": False})


def test_cli_sample_of_the_onnx_file_equals_the_checkpoint(files, tmp_path, capsys):
    common = ["--classes", "3,1,4", "--per-class", "2", "--seed", "5", "--no-progress", "--no-png"]
    assert main(["sample", "--checkpoint", str(files["one"]), "--out", str(tmp_path / "onnx"), *common]) == 0
    assert main(["sample", "--checkpoint", str(files["ckpt"]), "--out", str(tmp_path / "torch"), *common]) == 0
    a, b = np.load(tmp_path / "onnx" / "samples.npz"), np.load(tmp_path / "torch" / "samples.npz")
    assert a["labels"].tolist() == [3, 3, 1, 1, 4, 4] and (a["labels"] == b["labels"]).all()
    assert np.abs(a["images"].astype(int) - b["images"]).max() <= 1 and a["images"].std() > 10
    # a file holds one step count and fixed weights: other requests are refused in one line
    assert main(["sample", "--checkpoint", str(files["one"]), "--steps", "2", "--out", str(tmp_path / "x")]) == 2
    assert "1-step generator" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(files["one"]), "--compile", "--out", str(tmp_path / "x")]) == 2
    assert "--compile applies to a torch checkpoint" in capsys.readouterr().err


def test_serve_runs_the_onnx_file_without_a_torch_model(files, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pmf.cli import build_parser
    from pmf.commands.serve import build

    app, info, batcher = build(build_parser().parse_args(["serve", "--checkpoint", str(files["two"])]))
    assert isinstance(batcher.model, OnnxGenerator) and not isinstance(batcher.model, torch.nn.Module)
    assert info.class_names == NAMES and info.setting.steps == 2
    with TestClient(app) as client:
        resp = client.post("/generate", json={"classes": [3, 1, 4], "seed": 5, "format": "npz"})
        assert resp.status_code == 200
        got = np.load(__import__("io").BytesIO(resp.content))["images"]
        assert client.post("/generate", json={"classes": [3], "steps": 1}).status_code == 422
        assert client.get("/info").json()["limits"]["min_steps"] == 2
    assert main(["sample", "--checkpoint", str(files["ckpt"]), "--classes", "3,1,4", "--per-class", "1", "--seed",
                 "5", "--steps", "2", "--out", str(tmp_path), "--no-progress", "--no-png"]) == 0
    assert np.abs(got.astype(int) - np.load(tmp_path / "samples.npz")["images"]).max() <= 1


def test_eval_scores_the_onnx_files_images_as_the_checkpoints(files, tmp_path, fake_offline, capsys):
    common = ["--offline", "--num-images", "12", "--batch-size", "5", "--seed", "3", "--no-progress"]
    assert main(["eval", "--checkpoint", str(files["one"]), "--out", str(tmp_path / "onnx"), *common]) == 0
    assert main(["eval", "--checkpoint", str(files["ckpt"]), "--out", str(tmp_path / "torch"), *common]) == 0
    onnx_images, torch_images = (np.asarray(x).astype(int) for x in fake_offline)
    assert onnx_images.shape == torch_images.shape == (12, 32, 32, 3) and torch_images.std() > 10
    assert np.abs(onnx_images - torch_images).max() <= 1
    record = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    assert record["weights"] == {"precision": "fp32"} and record["settings"]["omega"] == 2.0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(files["one"]), "--ema", "d0.9", "--out", str(tmp_path / "x"),
                 *common]) == 2
    assert "--ema applies to a torch checkpoint" in capsys.readouterr().err
