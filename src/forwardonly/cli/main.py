"""Entry point of the ``forwardonly`` command.

Each subcommand lives in its own module under :mod:`forwardonly.cli` and
exposes ``register(subparsers)``, which adds its parser and sets ``func``.
Progress messages go through the ``logging`` logger ``forwardonly`` to stderr:
``--quiet`` keeps warnings and errors only (and no progress bars), ``--verbose``
adds debug messages; both are accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import EXTRAS, RunError, UserError, missing_extra

SUBCOMMANDS = ("demo", "train", "eval", "export", "models", "data", "configs", "local", "report", "federated")


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
    _verbosity_flags(parser, False)
    for p in sub.choices.values():
        # after the subcommand too, without resetting a flag given before it
        _verbosity_flags(p, argparse.SUPPRESS)
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


def _verbosity_flags(p, default) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="only warnings and errors on stderr, no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="also debug messages")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests and callers may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def show_progress(args) -> bool:
    """Progress bars on: not ``--no-progress``, not ``--quiet``, and stderr is a terminal."""
    return not getattr(args, "no_progress", False) and not args.quiet and sys.stderr.isatty()


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Send the ``forwardonly`` logger's messages to stderr, one plain line each."""
    log = logging.getLogger("forwardonly")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False  # an application's root handler would print every line twice
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argparse.Namespace(command=next((a for a in argv if not a.startswith("-")), None))
    try:
        args = _parse(parser, argv)
        args.argv = argv
        setup_logging(args.quiet, args.verbose)
        if not getattr(args, "func", None):
            parser.print_help()
            return 1
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"forwardonly {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:  # a full disk, a dead peer: what was saved before is intact
        print(f"forwardonly {args.command}: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:  # an optional dependency imported without require(): still one line
        if (e.name or "").split(".")[0] not in EXTRAS:
            raise
        print(f"forwardonly {args.command}: error: {missing_extra(e.name)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
