"""A model's classes: their names and picking them, each rule once.

Names (``class_names``): those a checkpoint records (its image folder's class folders), else digits for the
built-in sets, the 1,000 ImageNet names for ImageNet models (torchvision ships them offline), else "class N".
``pmf.checkpoints.metadata.ModelMetadata`` resolves them once when a model is loaded.

Picking, by index or by name: one rule for ``pmf sample --classes``, the ``classes`` of ``pmf serve``'s POST
/generate and the diffusers pipeline (docs/serve.md, "Classes"):

- An integer (JSON number, Python int) is a class index in [0, num_classes - 1].
- A text is a class name when the model has a class of that name, or of that synonym (a name "tench, Tinca
  tinca" also answers to "tench" and "Tinca tinca"); otherwise a number in it is an index.
  When a model's class names are themselves numbers other than their own indices (class folders ``1``, ``2``,
  ``3``: names "1", "2", "3" at indices 0, 1, 2), a number that is not one of its names is refused: a text never
  means a name for one class and an index for another.
- ``--classes`` text also takes comma-separated lists and ranges ``LO-HI``, each end read by the same rule: the
  classes from LO's index to HI's. A class name with a comma cannot be written there; training refuses class
  folders with a comma in their name.
"""

from __future__ import annotations

from .errors import PMFError
from .released_models import released
from .vocabulary import BUILTIN_DATA


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
        return [str(n) for n in recorded]
    if data in BUILTIN_DATA and num_classes == 10:
        return [str(i) for i in range(10)]
    imagenet = "imagenet" in (data or "").lower() or released(arch) is not None
    if imagenet and num_classes == 1000:
        names = imagenet_names()
        if names:
            return names
    return [f"class {i}" for i in range(num_classes)]


def name_index(names: list[str] | None) -> dict[str, int]:
    """class name -> index (the first class of a repeated name), each comma-separated synonym of a name too."""
    out: dict[str, int] = {}
    for i, name in enumerate(names or []):
        out.setdefault(str(name), i)
    for i, name in enumerate(names or []):  # synonyms after every full name: a full name wins
        for part in (p.strip() for p in str(name).split(",") if "," in str(name)):
            if part:
                out.setdefault(part, i)
    return out


def numeric_names(index: dict[str, int]) -> list[str]:
    """The class names that are numbers other than their own index (empty: numbers are indices)."""
    out = []
    for name, i in index.items():
        try:
            if int(name) != i:
                out.append(name)
        except ValueError:
            pass
    return out


def class_of(item: int | str, num_classes: int, index: dict[str, int]) -> int:
    """The class index of one ``item`` (an int, or a name or number as text) by the module's rule."""
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise PMFError(f"a class is an index or a name, got {item!r}")
    if isinstance(item, str):
        text = item
        if text in index:
            return index[text]
        try:
            item = int(text)
            if text != str(item):  # one spelling per number: "7", not "07", "+7" or " 7"
                raise ValueError
        except ValueError:
            known = ", ".join(list(index)[:8]) + (", ..." if len(index) > 8 else "")
            raise PMFError(f"unknown class {text!r}: give a class index or one of the model's class names "
                           f"({known or 'none recorded'})") from None
        numeric = numeric_names(index)
        if numeric:
            raise PMFError(f"{text!r} is not one of the model's class names, and its names are numbers "
                           f"({', '.join(numeric[:5])}, ...), so a number names a class here, never an index")
    if not 0 <= item < num_classes:
        raise PMFError(f"class {item} out of range [0, {num_classes - 1}]")
    return item


def class_texts(num_classes: int, names: list[str] | None) -> list[str]:
    """Every text ``class_of`` takes for a model: its class names, and its indices as numbers unless its names
    are numbers (what /openapi.json of pmf serve states)."""
    index = name_index(names)
    numbers = [] if numeric_names(index) else [str(i) for i in range(num_classes) if str(i) not in index]
    return [*index, *numbers]


def parse_classes(text: str | None, num_classes: int, names: list[str] | None = None) -> list[int] | None:
    """``--classes`` text ('3,5,7', '0-9', 'cat,dog', 'cat-dog') -> class indices; None for no text."""
    if text is None:
        return None
    index, out = name_index(names), []
    for part in (p.strip() for p in text.split(",")):
        if part in index or "-" not in part[1:]:
            try:
                out.append(class_of(part, num_classes, index))
            except PMFError as err:
                raise PMFError(f"--classes: {err}") from None
            continue
        out.extend(class_range(part, num_classes, index))
    if not out:
        raise PMFError("--classes names no class")
    return out


def class_range(part: str, num_classes: int, index: dict[str, int]) -> range:
    """The classes of 'LO-HI' (split at the first '-' where both ends are classes)."""
    error = None
    for at in (i for i, ch in enumerate(part) if ch == "-" and i > 0):
        try:
            lo, hi = class_of(part[:at], num_classes, index), class_of(part[at + 1:], num_classes, index)
        except PMFError as err:
            error = error or err
            continue
        if lo > hi:
            raise PMFError(f"--classes range {part!r} is empty: write the lower class first "
                           f"({part[at + 1:]}-{part[:at]})")
        return range(lo, hi + 1)
    raise PMFError(f"--classes {part!r}: {error}") from None


def fitting_names(names, num_classes: int) -> list[str] | None:
    """``names`` as a list where they hold one name per class of a model of ``num_classes`` classes, else None:
    names recorded for another class count name no class of this model."""
    return list(names) if names and len(names) == num_classes else None


def check_class_names(names, num_classes: int) -> None:
    """Refuse class names (None: none given) that do not hold one name per class."""
    if names is not None and fitting_names(names, num_classes) is None:
        raise PMFError(f"{len(names)} class names for a model of {num_classes} classes")
