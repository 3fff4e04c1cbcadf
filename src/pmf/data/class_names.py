"""Names of a checkpoint's classes, from the data it was trained on: digits for the built-in sets, the 1,000
ImageNet names for ImageNet models (torchvision ships them offline), else "class N"."""

from __future__ import annotations

from ..class_choice import fitting_names
from ..released_models import released
from .builtin import BUILTIN


def imagenet_names() -> list[str] | None:
    """The 1,000 ImageNet-1k class names in label order, or None without torchvision."""
    try:
        from torchvision.models._meta import _IMAGENET_CATEGORIES
    except Exception:  # torchvision missing, or a version that moved the private list
        return None
    names = list(_IMAGENET_CATEGORIES)
    return names if len(names) == 1000 else None


def class_names(num_classes: int, *, data: str | None = None, arch: str | None = None,
                recorded: list[str] | None = None) -> list[str]:
    """One name per class of a model with ``num_classes`` classes: the names its checkpoint ``recorded`` (the
    image folder's class folders), else from ``data`` (a recipe's data entry, if known) and preset ``arch``."""
    if fitting_names(recorded, num_classes):
        return list(recorded)
    if data in BUILTIN and num_classes == 10:
        return [str(i) for i in range(10)]
    imagenet = "imagenet" in (data or "").lower() or released(arch) is not None
    if imagenet and num_classes == 1000:
        names = imagenet_names()
        if names:
            return names
    return [f"class {i}" for i in range(num_classes)]


def checkpoint_class_names(loaded) -> list[str]:
    """The class names a ``pmf.checkpoints.load.LoadedCheckpoint`` records, else those of its data and preset."""
    return class_names(loaded.model.config.num_classes, data=loaded.data, arch=loaded.arch,
                       recorded=loaded.class_names)
