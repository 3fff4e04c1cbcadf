"""Names of a model's classes: the rule lives in ``pmf.class_choice`` (``class_names``, ``imagenet_names``), which
every layer may import; this module keeps the names importable from here."""

from __future__ import annotations

from ..class_choice import class_names, imagenet_names

__all__ = ["checkpoint_class_names", "class_names", "imagenet_names"]


def checkpoint_class_names(loaded) -> list[str]:
    """The class names of a ``pmf.checkpoints.load.LoadedCheckpoint``, as its metadata resolved them on loading
    (recorded names, else those of its data and preset)."""
    return list(loaded.meta.class_names)
