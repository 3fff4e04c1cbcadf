"""Datasets: built-in small sets that need no network (``builtin``), plus image folders and packed arrays."""

from .builtin import BUILTIN, ArrayData, load_builtin

__all__ = ["BUILTIN", "ArrayData", "load_builtin"]
