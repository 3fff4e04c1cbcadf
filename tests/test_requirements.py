"""pyproject.toml against the code: the torch floor has every torch API the package uses, and each optional
package the source imports belongs to an extra (packages only the tests import belong to [test])."""

import ast
import re
from pathlib import Path

import torch

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "pmf"
# import name -> distribution, for the optional packages the source may import
OPTIONAL = {"tensorboard": "tensorboard", "timm": "timm", "lpips": "lpips", "torch_fidelity": "torch-fidelity",
            "mlxtend": "mlxtend", "sklearn": "scikit-learn", "matplotlib": "matplotlib",
            "huggingface_hub": "huggingface_hub", "fastapi": "fastapi", "uvicorn": "uvicorn",
            "torchvision": "torchvision", "triton": None, "pydantic": "fastapi", "onnx": "onnx",
            "onnxscript": "onnxscript", "onnxruntime": "onnxruntime",
            "diffusers": "diffusers", "wandb": "wandb", "datasets": "datasets"}  # triton: part of CUDA torch
CORE = {"torch", "numpy", "PIL", "safetensors", "tqdm", "pmf"}


def project() -> dict:
    text = (REPO / "pyproject.toml").read_text()
    if tomllib is not None:
        return tomllib.loads(text)["project"]
    import pytest

    pytest.skip("tomllib needs Python 3.11")


def source_imports() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_installed_torch_meets_the_floor_and_has_the_apis_the_floor_promises():
    floor = next(d for d in project()["dependencies"] if d.startswith("torch"))
    want = tuple(int(v) for v in re.search(r">=\s*([\d.]+)", floor).group(1).split("."))
    have = tuple(int(v) for v in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert have >= want[:2]
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard  # noqa: F401
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter  # noqa: F401

    assert hasattr(FSDPModule, "set_custom_reduce_scatter")
    assert hasattr(FSDPModule, "set_force_sum_reduction_for_comms")


def test_every_optional_import_of_the_source_is_in_an_extra():
    extras = project()["optional-dependencies"]
    in_extras = {re.split(r"[<>=\[ ]", d)[0].lower() for name, deps in extras.items() if name not in ("dev", "test")
                 for d in deps}
    stdlib = set(__import__("sys").stdlib_module_names)
    third_party = {n for n in source_imports() - stdlib - CORE}
    unknown = third_party - set(OPTIONAL)
    assert not unknown, f"imports with no extra: {unknown}"
    missing = {OPTIONAL[n] for n in third_party if OPTIONAL[n]} - in_extras
    assert not missing, f"imported by the source but in no extra: {missing}"
    test_only = {re.split(r"[<>=\[ ]", d)[0].lower() for d in extras["test"]}
    assert {"httpx", "scipy"} <= test_only
    assert not ({"httpx", "scipy"} & in_extras), "httpx and scipy are for the tests only: the [test] extra"


def test_the_onnxruntime_floor_is_the_one_the_install_hint_names():
    from pmf.export.onnx_runtime import ORT_FLOOR

    floor = next(d for d in project()["optional-dependencies"]["onnx"] if d.startswith("onnxruntime"))
    assert floor == f"onnxruntime>={ORT_FLOOR}"
