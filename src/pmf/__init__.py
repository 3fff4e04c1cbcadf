"""pixel-meanflow: Pixel MeanFlow (pMF) in PyTorch.

The names below are loaded on first use (PEP 562), so ``import pmf.sampling`` or ``import pmf.serve`` pays only
for what it imports itself."""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

try:
    __version__ = metadata.version("pixel-meanflow")
except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH without an install
    __version__ = "0+unknown"

_FACE = {  # public name -> the module that defines it
    "load_checkpoint": "checkpoints.load", "load_model": "checkpoints.load",
    "PRESETS": "model_configs", "ModelConfig": "model_configs", "model_config": "model_configs",
    "CheckpointError": "errors", "PMFError": "errors",
    "PMFDiT": "nn", "build_model": "nn", "count_parameters": "nn", "load_release_state_dict": "nn",
    "release_state_dict": "nn",
}
__all__ = sorted(_FACE)


def lazy_names(package: str, table: dict[str, str]):
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) that import each name of ``table`` (public name -> the
    submodule that defines it) on first use and keep it."""

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{table[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *table})

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_names(__name__, _FACE)
