"""Optional dependencies (the extras of pyproject.toml): the one rule for what a user is told when an import of
one fails. Each such import sits in a ``with needs(EXTRA, WHAT):`` block, so the source keeps its plain import
statements (tests/test_requirements.py reads them to check that every optional package is in an extra)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import PMFError

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class MissingExtra(PMFError, ImportError):
    """An optional package that cannot be imported. Both a PMFError (the CLI prints it in one line) and an
    ImportError (code that probes for an extra with ``except ImportError`` keeps working)."""


def install_command(extra: str) -> str:
    return f"pip install 'pixel-meanflow[{extra}]'"


@contextlib.contextmanager
def needs(extra: str, what: str, *, also: str = "") -> Iterator[None]:
    """Run the imports of an optional package; where one fails, raise ``MissingExtra``: ``what`` (the
    capability and the package it needs, e.g. "plots need matplotlib"), the extra's install command, then
    ``also``. A torchvision that is installed but was built for another torch (its operators fail to register
    when a package imports it) is named as the cause instead, since installing the extra again would not help."""
    try:
        yield
    except ImportError as err:
        detail = "" if isinstance(err, ModuleNotFoundError) else f" ({err})"  # e.g. a release too old for a name
        raise MissingExtra(f"{what}: {install_command(extra)}{also}{detail}") from err
    except RuntimeError as err:
        if not broken_torchvision(err):
            raise
        raise MissingExtra(f"{what}, which imports torchvision, and {torchvision_mismatch()}") from err


def broken_torchvision(err: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) is torchvision failing to register its operators."""
    while err is not None:
        if "torchvision::" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def torchvision_mismatch() -> str:
    """Why torchvision does not load beside this torch, and the two ways out."""
    import importlib.metadata

    import torch

    try:
        tv = f"torchvision {importlib.metadata.version('torchvision')}"
    except importlib.metadata.PackageNotFoundError:
        tv = "the torchvision found"
    return (f"{tv} does not load beside torch {torch.__version__} (it was built for another torch build): install "
            f"both from one index (on a CPU-only machine: pip install torch torchvision --index-url {CPU_INDEX}), "
            f"or pip uninstall torchvision if nothing you use needs it (the [perceptual] and [eval] extras do)")


def pyplot(what: str = "plots need matplotlib", *, also: str = ""):
    """matplotlib's pyplot on the Agg backend (files only, no display needed), or ``MissingExtra``."""
    with needs("plot", what, also=also):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    return plt
