"""Command-line flags generated from a config dataclass (``TrainConfig``): one flag per field, spelled from its
path (``--ema-decays``, ``--steps``) unless the field names its flag (``pmf.model_configs.doc``), with its help, choices
and shown default taken from the field. A new field gets its flag, and a flag cannot drift from its field."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterator

from ..errors import PMFError
from ..model_configs import doc, field_types, literal_choices
from ._deprecation import _Deprecated
from ._numbers import numbers

PREFIX = "config:"  # namespace destinations of the generated flags: "config:optim.lr"
OFF = "config-off:"  # --no-SECTION of a section that may be None (perceptual)
NONE = object()  # the value "none" given for a field that may be None (None itself: flag not given)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A field that takes a value from the command line: its path from the root config, the field, its type."""

    path: tuple[str, ...]
    field: dataclasses.Field
    type: object

    @property
    def flag(self) -> str:
        return self.field.metadata.get("flag") or "--" + "-".join(self.path).replace("_", "-").lower()

    @property
    def dest(self) -> str:
        return PREFIX + ".".join(self.path)

    @property
    def help(self) -> str:
        return self.field.metadata.get("help") or f"config field {'.'.join(self.path)}"


def optional(tp) -> tuple[object, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def leaves(cls, prefix: tuple[str, ...] = ()) -> Iterator[Leaf]:
    """Every value field of ``cls``, nested config dataclasses walked into (their fields are ``section.name``)."""
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        inner, _ = optional(tp)
        if dataclasses.is_dataclass(inner):
            yield from leaves(inner, (*prefix, f.name))
        else:
            yield Leaf((*prefix, f.name), f, tp)


def said_by_flag(err: PMFError, cls) -> PMFError:
    """A config check's error (``pmf.training.config.ConfigValueError``) said with the flag of its field, which
    stays named for a value from a --config file; any other error unchanged."""
    from ..training.config import ConfigValueError

    if not isinstance(err, ConfigValueError):
        return err
    leaf = next((lf for lf in leaves(cls) if ".".join(lf.path) == err.field), None)
    if leaf is None:
        return err
    return PMFError(f"{leaf.flag}: {err}")


def section_class(cls, path: tuple[str, ...]):
    for name in path:
        cls, _ = optional(field_types(cls)[name])
    return cls


def converter(leaf: Leaf) -> Callable[[str], object]:
    """The text-to-value function of a leaf's flag; "none" gives NONE where the field may be None."""
    tp, may_be_none = optional(leaf.type)
    origin, choices = typing.get_origin(tp), literal_choices(tp)
    if leaf.field.metadata.get("parse") is not None:
        base = leaf.field.metadata["parse"]
    elif choices is not None:
        base = str
    elif tp in (int, float, str):
        base = tp
    elif origin in (list, tuple) and typing.get_args(tp)[:1] == (str,):
        def base(text):
            return [v.strip() for v in text.split(",") if v.strip()]
    elif origin in (list, tuple):
        count = len(typing.get_args(tp)) if origin is tuple and ... not in typing.get_args(tp) else None

        def base(text):
            values = numbers(text, leaf.flag, allow_empty=True)
            if count is not None and len(values) != count:
                raise PMFError(f"{leaf.flag} takes {count} comma-separated numbers, got {text!r}")
            return values
    else:  # a dict or any other type: its JSON form, checked by the config itself
        want = dict if (tp is dict or origin is dict) else object

        def base(text):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = None if want is dict else text  # a bare word stands for itself
            if not isinstance(value, want):
                raise PMFError(f"{leaf.flag} takes a JSON object, e.g. '{{\"depth\": 6}}', got {text!r}")
            return value

    def convert(text: str):
        if may_be_none and text.strip().lower() == "none":
            return NONE
        try:
            value = base(text)
        except PMFError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        if choices is not None and value not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(choices)})")
        return value

    convert.__name__ = getattr(base, "__name__", "value")  # argparse names it in "invalid int value"
    return convert


def shown(value, leaf: Leaf) -> str:
    if value is None:
        return leaf.field.metadata.get("none") or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(shown(v, leaf) for v in value) or "none"
    if isinstance(value, dict):
        return json.dumps(value) if value else "none"
    return str(value)


def value_at(config, path: tuple[str, ...]):
    """The value at ``path`` of a config, or of its section's class defaults where the section is None."""
    node, cls = config, type(config)
    for i, name in enumerate(path[:-1]):
        cls = section_class(cls, (name,))
        node = getattr(node, name)
        if node is None:
            return value_at(cls(), path[i + 1:])[0], False
    return getattr(node, path[-1]), True


def add_config_flags(p, cls, example, default: Callable[[str], str], *, only: str | None = None,
                     replaced: dict[str, str] | None = None) -> None:
    """One flag per leaf of ``cls`` (of its section ``only`` when given), sections as argument groups. The help
    shows ``default(text)`` with the value in ``example`` (a config), or the class default in a section that
    ``example`` leaves off; where a section may be None, ``--no-SECTION`` turns it off. ``replaced``: leaf path
    -> the command's own flag that sets it; the leaf's flag stays as a hidden old spelling with a note."""
    groups: dict[str, object] = {}
    for leaf in leaves(cls):
        section = leaf.path[0] if len(leaf.path) > 1 else None
        if only is not None and section != only:
            continue
        group = p if section is None else groups.get(section)
        if group is None:
            meta = next(f for f in dataclasses.fields(cls) if f.name == section).metadata
            group = groups[section] = p.add_argument_group(f"{section}: {meta.get('help', '')}".rstrip(": "))
            if optional(field_types(cls)[section])[1]:
                group.add_argument(f"--no-{section}", dest=OFF + section, action="store_true",
                                   help=f"turn off the recipe's {meta.get('help') or section}")
        new = (replaced or {}).get(".".join(leaf.path))
        if new is not None:
            group.add_argument(leaf.flag, dest=leaf.dest, action=_Deprecated, new=new, type=converter(leaf),
                               help=argparse.SUPPRESS)
            continue
        value, present = value_at(example, leaf.path)
        text = default(shown(value, leaf)) if present else shown(value, leaf)
        help = f"{leaf.help} (default: {text})".replace("%", "%%")
        tp, _ = optional(leaf.type)
        if tp is bool:
            group.add_argument(leaf.flag, dest=leaf.dest, action=argparse.BooleanOptionalAction, default=None,
                               help=help)
            continue
        choices = literal_choices(tp)
        metavar = "{" + ",".join(choices) + "}" if choices else leaf.path[-1].upper()
        convert = converter(leaf)
        group.add_argument(leaf.flag, dest=leaf.dest, type=convert, default=None, metavar=metavar, help=help)
        for old in leaf.field.metadata.get("old", ()):
            group.add_argument(old, dest=leaf.dest, action=_Deprecated, new=leaf.flag, type=convert,
                               help=argparse.SUPPRESS)


def flag_value(args, path: str):
    """The value the command line gave for the config field ``path`` ("arch", "optim.lr"), None if not given."""
    value = getattr(args, PREFIX + path, None)
    return None if value is NONE else value


def apply_config_flags(data: dict, cls, args) -> dict:
    """``data`` (a config's ``to_dict()``) with the value of every flag given in ``args``. A flag of a section
    that is off (None) turns it on with its class defaults; ``--no-SECTION`` wins over the section's flags."""
    for dest, value in vars(args).items():
        if not dest.startswith(PREFIX) or value is None:
            continue
        *head, name = dest.removeprefix(PREFIX).split(".")
        node = data
        for i, part in enumerate(head):
            if node.get(part) is None:
                node[part] = dataclasses.asdict(section_class(cls, tuple(head[:i + 1]))())
            node = node[part]
        node[name] = None if value is NONE else value
    for dest, value in vars(args).items():
        if dest.startswith(OFF) and value:
            data[dest.removeprefix(OFF)] = None
    return data


def add_perceptual_args(p) -> None:
    """The flags of the training config's perceptual section (``pmf train``, ``pmf demo``)."""
    from ..training.config import TrainConfig

    add_config_flags(p, TrainConfig, TrainConfig(), str, only="perceptual")


def apply_perceptual_args(cfg, args) -> None:
    """``cfg.perceptual`` with the perceptual flags given in ``args``."""
    cfg.perceptual = type(cfg).from_dict(apply_config_flags(cfg.to_dict(), type(cfg), args)).perceptual


# ---- a command's options: flags with the field's name as destination and its default ---------------------------

def option(default=dataclasses.MISSING, help: str = "", *, flag: str | None = None, none: str | None = None,
           old: tuple[str, ...] = (), parse=None, min: float | None = None, max: float | None = None):
    """A field of a command's options dataclass: ``pmf.model_configs.doc``'s field, whose ``min`` / ``max`` (the
    smallest and largest value the option takes) ``check_ranges`` checks and --help shows."""
    return doc(default, help, flag=flag, none=none, old=old, parse=parse, min=min, max=max)


def check_ranges(options) -> None:
    """Refuse a field below its ``min`` or above its ``max``, in one line that names its flag (``--batch-size
    must be >= 1``)."""
    for leaf in leaves(type(options)):
        low, high = leaf.field.metadata.get("min"), leaf.field.metadata.get("max")
        value = getattr(options, leaf.field.name)
        if value is None or isinstance(value, bool):
            continue
        if low is not None and value < low:
            raise PMFError(f"{leaf.flag} must be >= {low:g}, got {value:g}")
        if high is not None and value > high:
            raise PMFError(f"{leaf.flag} must be <= {high:g}, got {value:g}")


def add_option_flags(p, cls) -> None:
    """One flag per field of ``cls`` (a flat options dataclass): its value lands in ``args.<field>`` with the
    field's default, so ``cls.from_args`` (``options_from_args``) reads it back; the help shows the default and
    the smallest value allowed."""
    for leaf in leaves(cls):
        name, meta = leaf.field.name, leaf.field.metadata
        rule = "".join(f"; at {word} {meta[key]:g}" for key, word in (("min", "least"), ("max", "most"))
                       if meta.get(key) is not None)
        required = leaf.field.default is dataclasses.MISSING  # a field without a default: a required flag
        given = "required" if required else f"default: {shown(leaf.field.default, leaf)}"
        help = f"{leaf.help} ({given}{rule})".replace("%", "%%")
        if optional(leaf.type)[0] is bool:
            p.add_argument(leaf.flag, dest=name, action="store_true", help=help)
            continue
        base = converter(leaf)

        def convert(text, base=base):
            value = base(text)
            return None if value is NONE else value

        convert.__name__ = base.__name__
        choices = [c for c in literal_choices(leaf.type) or () if c is not None]
        metavar = "{" + ",".join(choices) + "}" if choices else name.upper()
        p.add_argument(leaf.flag, dest=name, type=convert, default=None if required else leaf.field.default,
                       required=required, metavar=metavar, help=help)
        for old in meta.get("old", ()):
            p.add_argument(old, dest=name, action=_Deprecated, new=leaf.flag, type=convert, help=argparse.SUPPRESS)


def options_from_args(cls, args):
    """``cls`` with the values ``add_option_flags`` put in ``args`` (validated by ``cls`` itself)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
