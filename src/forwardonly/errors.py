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
