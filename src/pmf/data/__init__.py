"""Datasets: built-in small sets that need no network (``builtin``), plus image folders and packed arrays."""

from .builtin import BUILTIN, ArrayData, load_builtin
from .folder import FolderDataset, scan_folder
from .packed import load_arrays, load_packed, open_training_data, pack_folder

__all__ = ["BUILTIN", "ArrayData", "FolderDataset", "load_arrays", "load_builtin", "load_packed",
           "open_training_data", "pack_folder", "scan_folder"]
