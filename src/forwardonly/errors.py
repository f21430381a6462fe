"""User-facing errors.

A :class:`UserError` is a problem with the user's input (a config value, a data
file, a missing model). The command line prints its message on one line and
exits with status 2; nothing is written.

A :class:`RunError` is a run stopped by its surroundings rather than its input:
a full disk while writing a checkpoint (:class:`WriteError`), a distributed peer
that died or hung (:class:`forwardonly.distributed.DistributedError`). The
command line prints it on one line and exits with status 1; what was on disk
before stays loadable, so the run can be resumed.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class RunError(Exception):
    """The run was stopped by its environment (disk, peers): printed as one line, exit status 1."""


class WriteError(RunError, OSError):
    """A file or directory could not be written (``errno``: ENOSPC, EDQUOT, EROFS, ...); the destination
    is unchanged. Raised by :func:`forwardonly.io.atomic_path` as ``WriteError(errno, message)``."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" prefix
        return self.strerror or super().__str__()


def where(path, line: int | None = None) -> str:
    """Format a location as ``file:line`` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)
