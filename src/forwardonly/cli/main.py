"""Entry point of the ``forwardonly`` command.

Each subcommand lives in its own module under :mod:`forwardonly.cli` and
exposes ``register(subparsers)``, which adds its parser and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

SUBCOMMANDS = ("demo", "train", "eval", "models", "data", "configs", "local", "report")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="forwardonly",
        description="Train and fine-tune neural networks without backpropagation.",
    )
    parser.add_argument("--version", action="version", version=f"forwardonly {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"forwardonly.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"forwardonly.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def _parse(parser, argv: list[str]):
    """Parse with ``key=value`` overrides allowed anywhere and Hugging Face-style flags translated."""
    from . import common

    argv, notes = common.translate_aliases(argv)
    for note in notes:
        print(note, file=sys.stderr)
    args, extras = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *[x for x in extras if common.OVERRIDE.match(x)]]
        extras = [x for x in extras if not common.OVERRIDE.match(x)]
    elif hasattr(args, "out"):
        extras = common.take_out_dir(args, extras)
    if extras:
        command = " ".join(filter(None, (args.command, getattr(args, "subcommand", None))))
        cls = getattr(args, "config_cls", lambda: None)()
        raise UserError(common.unknown_arguments(command or "", extras, cls))
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argparse.Namespace(command=next((a for a in argv if not a.startswith("-")), None))
    try:
        args = _parse(parser, argv)
        args.argv = argv
        if not getattr(args, "func", None):
            parser.print_help()
            return 1
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"forwardonly {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
