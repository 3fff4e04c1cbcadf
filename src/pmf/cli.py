"""The ``pmf`` command line. Each sub-command lives in ``pmf/commands/<name>.py`` and defines
``add_parser(subparsers)``, which registers a parser whose ``func(args)`` runs it."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

from . import __version__, commands
from .commands._args import PMFArgumentParser
from .errors import PMFError


def build_parser() -> argparse.ArgumentParser:
    parser = PMFArgumentParser(prog="pmf", description="Pixel MeanFlow: one-step image generation in pixel "
                                     "space. Run `pmf COMMAND --help` for the options of a command.")
    parser.add_argument("--version", action="version", version=f"pixel-meanflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=PMFArgumentParser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # torch's forward-AD decompositions (used by torch.func.jvp) script themselves with the deprecated
    # torch.jit.script on first use; the warning is torch's own and says nothing about the user's run
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's own parser, which suggests the closest of its flags
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        (sub.choices.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for messages that repeat it
    try:
        return int(args.func(args) or 0)
    except PMFError as err:
        print(f"pmf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pmf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
