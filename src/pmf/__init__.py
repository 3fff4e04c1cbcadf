"""pixel-meanflow: Pixel MeanFlow (pMF) in PyTorch.

The names below are loaded on first use (PEP 562), so ``import pmf.sampling`` or ``import pmf.serve`` pays only
for what it imports itself."""

from __future__ import annotations

import importlib
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


def __getattr__(name: str):
    if name in _FACE:
        value = getattr(importlib.import_module(f".{_FACE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pmf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FACE})
