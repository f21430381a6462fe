"""User-facing errors.

A :class:`UserError` is a problem with the user's input (a config value, a data
file, a missing model). The command line prints its message on one line and
exits with status 2; nothing is written.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def where(path, line: int | None = None) -> str:
    """Format a location as ``file:line`` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def script_main(main, *args) -> int:
    """Run a script's ``main(*args)``: a :class:`UserError` becomes one line on stderr and exit status 2.

    For the benchmark scripts, which are run as files (``sys.exit(script_main(main))``)."""
    import sys

    try:
        return main(*args) or 0
    except UserError as e:
        print(f"{sys.argv[0]}: error: {e}", file=sys.stderr)
        return 2
