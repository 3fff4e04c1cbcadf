"""Old spellings kept working with a note until the next minor version: hidden flag aliases (``DEPRECATED``)
and the old positional form of ``pmf export`` / ``pmf pack``."""

from __future__ import annotations

import argparse
import sys

from ..errors import PMFError

# old spellings -> their replacement (hidden aliases)
DEPRECATED = {"--num-workers": "--workers", "--num-samples": "--num-images", "--emas": "--ema",
              "--t-min": "--interval", "--t-max": "--interval"}


class _Deprecated(argparse.Action):
    """A hidden old spelling: stores into the new flag's destination and prints a one-line note."""

    def __init__(self, option_strings, dest, new: str = "", convert=None, **kw):
        super().__init__(option_strings, dest, **kw)
        self.new, self.convert = new, convert

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"pmf: note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.convert(values) if self.convert else values)


def deprecated(p, old: str, dest: str, *, convert=None, type=None, nargs=None) -> None:
    p.add_argument(old, dest=dest, action=_Deprecated, new=DEPRECATED[old], convert=convert, type=type,
                   nargs=nargs, help=argparse.SUPPRESS)


def legacy_positionals(args, names: tuple[str, ...] = ("checkpoint", "out")) -> None:
    """Accept the old positional form (``pmf export CHECKPOINT OUT``) with a note; require the flags otherwise."""
    given = list(getattr(args, "legacy", None) or [])
    if given:
        if len(given) > len(names):
            raise PMFError(f"unexpected arguments {given[len(names):]}")
        print(f"pmf: note: positional {' '.join(n.upper() for n in names[:len(given)])} is deprecated; use "
              f"{' '.join('--' + n for n in names[:len(given)])}", file=sys.stderr)
        for name, value in zip(names, given):
            if getattr(args, name, None) is not None:
                raise PMFError(f"--{name} given twice (as a flag and as a positional argument)")
            setattr(args, name, value)
    missing = [f"--{n}" for n in names if getattr(args, n, None) is None]
    if missing:
        raise PMFError(f"missing {' and '.join(missing)}")
