"""pmf.extras: a failed import of an optional package becomes one line with the extra's install command, and a
torchvision built for another torch is named as the cause instead of a traceback from deep inside a package."""

import importlib
import sys

import pytest
import torch

from pmf.errors import PMFError
from pmf.extras import MissingExtra, needs


def test_a_missing_package_gives_the_extras_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(MissingExtra) as info:
        with needs("plot", "plots need matplotlib", also=", or pass --no-plot"):
            import matplotlib  # noqa: F401
    assert str(info.value) == "plots need matplotlib: pip install 'pixel-meanflow[plot]', or pass --no-plot"
    assert isinstance(info.value, PMFError) and isinstance(info.value, ImportError)


def test_a_release_without_the_name_is_quoted():
    with pytest.raises(MissingExtra, match=r"needs json >= 9: pip install 'pixel-meanflow\[x\]' \(cannot import "
                                           r"name 'NoSuchThing'"):
        with needs("x", "this needs json >= 9"):
            from json import NoSuchThing  # noqa: F401


def write_broken_torchvision(folder):
    """A package whose import fails as torchvision's does beside another torch build, and a library that
    imports it and wraps the error, as diffusers' lazy modules do."""
    (folder / "vision_like").mkdir()
    (folder / "vision_like" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    (folder / "wrapping_lib.py").write_text(
        "try:\n    import vision_like\nexcept RuntimeError as e:\n"
        "    raise RuntimeError('Failed to import wrapping_lib.models (look up to see its traceback)') from e\n")


def test_a_torchvision_of_another_torch_is_named_with_both_ways_out(tmp_path, monkeypatch):
    write_broken_torchvision(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtra) as info:
        with needs("diffusers", "pmf.export.diffusers_pipeline needs diffusers >= 0.42"):
            importlib.import_module("wrapping_lib")
    text = str(info.value)
    assert text.startswith("pmf.export.diffusers_pipeline needs diffusers >= 0.42, which imports torchvision, and ")
    assert f"does not load beside torch {torch.__version__}" in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text and "pip uninstall torchvision" in text
    assert "pip install 'pixel-meanflow[diffusers]'" not in text  # installing the extra again would not help


def test_other_runtime_errors_pass_through():
    with pytest.raises(RuntimeError, match="^unrelated$"):
        with needs("plot", "plots need matplotlib"):
            raise RuntimeError("unrelated")


def test_pmf_diffusers_without_diffusers_is_an_import_error_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    monkeypatch.delitem(sys.modules, "pmf.export.diffusers_pipeline", raising=False)
    with pytest.raises(ImportError, match=r"pmf.export.diffusers_pipeline needs diffusers >= 0.42: pip install "
                                          r"'pixel-meanflow\[diffusers\]'"):
        importlib.import_module("pmf.export.diffusers_pipeline")


def test_test_modules_of_extras_skip_with_the_packages_message_beside_a_broken_torchvision(tmp_path):
    """A torchvision built for another torch (simulated: its import fails as such a build's does): the modules
    that need it skip at collection with pmf's MissingExtra message instead of failing."""
    for needed in ("timm", "lpips", "diffusers"):  # the rest of both modules' extras, as where torchvision breaks
        pytest.importorskip(needed)
    import os
    import subprocess
    from pathlib import Path

    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root / "src"), str(root / "tests")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/export/test_diffusers.py", "tests/training/test_train_perceptual.py"],
                          cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode in (0, 5) and "error" not in out.lower(), out[-3000:]
    assert out.count("does not load beside torch") == 2, out[-3000:]
