"""int8 ONNX files (pmf.export.onnx_quantize, pmf export --quantize int8): int8 linear maps with the attention node
left as it is, the pixel error measured at export and recorded in the file, and printed where the file is
chosen (the export) and used (pmf sample)."""

import json

import numpy as np
import pytest
import torch

try:
    import onnx
    import onnxruntime.quantization  # noqa: F401
    import onnxscript  # noqa: F401
except ImportError:
    pytest.skip("ONNX tests need pip install 'pixel-meanflow[onnx]'", allow_module_level=True)

import pmf  # noqa: E402
from helpers import random_model  # noqa: E402
from pmf.cli import main  # noqa: E402
from pmf.export.onnx_export import WEIGHTS_KEY, export_onnx  # noqa: E402
from pmf.export.onnx_quantize import probe_error  # noqa: E402
from pmf.export.onnx_runtime import OnnxGenerator, describe_weights, read_metadata  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A training checkpoint, its fp32 export and its int8 export through the CLI (with what the CLI printed)."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("int8")
    model = random_model(seed=3)
    sd = model.state_dict()
    ckpt = folder / "ck.pt"
    torch.save({"format": "pixel-meanflow", "model_config": model.config.to_dict(), "model": sd, "ema": {"d0.9": sd},
                "train_config": {"arch": "pMF-Tiny/4", "sample": {"omega": 2.0, "t_min": 0.1, "t_max": 0.9}}}, ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = io.StringIO()
    try:
        fp32 = export_onnx(pmf.load_checkpoint(ckpt), folder / "fp32.onnx")
        with contextlib.redirect_stdout(out):
            assert main(["export", "--checkpoint", str(ckpt), "--out", str(folder / "q.onnx"), "--quantize",
                         "int8"]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"ckpt": ckpt, "fp32": fp32, "int8": folder / "q.onnx", "printed": out.getvalue(), "folder": folder}


def test_every_matmul_is_int8_and_attention_stays_the_onnx_op(files):
    ops = [n.op_type for n in onnx.load(str(files["int8"])).graph.node]
    fp32_ops = [n.op_type for n in onnx.load(str(files["fp32"])).graph.node]
    linear = fp32_ops.count("MatMul") + fp32_ops.count("Gemm")  # Gemm: the embedders' linear maps with a bias
    assert ops.count("MatMulInteger") == linear and "MatMul" not in ops and "Gemm" not in ops
    assert ops.count("Attention") == fp32_ops.count("Attention") > 0 and "QAttention" not in ops
    assert files["int8"].stat().st_size < 0.5 * files["fp32"].stat().st_size
    assert not list(files["folder"].glob(".pmf-fp32-*"))  # the intermediate fp32 file is gone


def test_the_recorded_error_is_the_measured_one_and_the_export_prints_it(files):
    weights = read_metadata(files["int8"])["weights"]
    assert weights["precision"] == "int8" and weights["error"]["probe_images"] == 8
    again = probe_error(OnnxGenerator(files["fp32"]), OnnxGenerator(files["int8"]))
    assert abs(again["max_levels"] - weights["error"]["max_levels"]) <= 1
    assert abs(again["mean_levels"] - weights["error"]["mean_levels"]) <= 0.05
    assert 0 < again["mean_levels"] < 4 and again["max_levels"] > 0  # changed, and only a little
    assert describe_weights(weights) in files["printed"]
    assert f"up to {weights['error']['max_levels']} uint8 levels from the fp32 export" in files["printed"]
    # the metadata that says how to sample the file is the fp32 export's
    a, b = read_metadata(files["fp32"]), read_metadata(files["int8"])
    assert {k: v for k, v in a.items() if k != "weights"} == {k: v for k, v in b.items() if k != "weights"}
    assert a["weights"] == {"precision": "fp32"}


def test_pmf_sample_says_the_file_is_int8_and_stays_near_the_fp32_file(files, tmp_path, capsys):
    common = ["--classes", "3,1,4", "--per-class", "2", "--seed", "5", "--no-progress", "--no-png"]
    assert main(["sample", "--checkpoint", str(files["fp32"]), "--out", str(tmp_path / "a"), *common]) == 0
    assert "int8" not in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(files["int8"]), "--out", str(tmp_path / "b"), *common]) == 0
    assert "q.onnx: int8 weights (onnxruntime dynamic quantisation" in capsys.readouterr().err
    a, b = (np.load(tmp_path / k / "samples.npz")["images"].astype(int) for k in "ab")
    assert 0 < np.abs(a - b).mean() < 4


def test_serve_reports_the_int8_weights_in_info(files):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pmf.cli import build_parser
    from pmf.commands.serve import build

    for key, precision in (("int8", "int8"), ("fp32", "fp32")):
        app, info, _ = build(build_parser().parse_args(["serve", "--checkpoint", str(files[key])]))
        with TestClient(app) as client:
            weights = client.get("/info").json()["weights"]
        assert weights == read_metadata(files[key])["weights"] and weights["precision"] == precision


def test_a_file_without_the_weights_record_reads_as_fp32(files, tmp_path):
    model = onnx.load(str(files["fp32"]))
    kept = [p for p in model.metadata_props if p.key != WEIGHTS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "old.onnx"))
    assert read_metadata(tmp_path / "old.onnx")["weights"] == {"precision": "fp32"}
    assert json.loads(next(p.value for p in onnx.load(str(files["int8"])).metadata_props
                           if p.key == WEIGHTS_KEY))["precision"] == "int8"


def test_quantize_applies_to_onnx_exports_only(files, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(files["ckpt"]), "--out", str(tmp_path / "w.safetensors"),
                 "--quantize", "int8"]) == 2
    assert "--quantize applies to ONNX exports only" in capsys.readouterr().err
    assert not (tmp_path / "w.safetensors").exists()
