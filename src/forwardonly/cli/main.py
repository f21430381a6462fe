"""Entry point of the ``forwardonly`` command.

Each subcommand lives in its own module under :mod:`forwardonly.cli` and
exposes ``register(subparsers)``, which adds its parser and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import RunError, UserError

SUBCOMMANDS = ("demo", "train", "eval", "models", "data", "local", "report")


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"forwardonly {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:  # a full disk, a dead peer: what was saved before is intact
        print(f"forwardonly {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
