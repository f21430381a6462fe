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


# The optional dependencies, by top-level module, and the extra that installs each.
EXTRAS = {"transformers": "lm", "peft": "lm", "accelerate": "lm", "tokenizers": "lm", "gguf": "lm",
          "datasets": "lm", "matplotlib": "plot", "sklearn": "local", "tensorboard": "tensorboard",
          "wandb": "wandb", "mlflow": "mlflow", "flwr": "federated", "ray": "federated",
          "lomo_optim": "baselines", "galore_torch": "baselines", "cma": "cma"}


class MissingExtra(UserError, ImportError):
    """An optional dependency is not installed; the message is one line naming the ``pip install``."""


def missing_extra(module: str, purpose: str = "") -> MissingExtra:
    """The one-line error for a missing optional ``module`` (its top-level name, e.g. ``"transformers"``)."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top, "all")
    what = f"{purpose} needs {top}" if purpose else f"{top} is not installed"
    return MissingExtra(f"{what}: pip install 'forwardonly[{extra}]'", name=top)


def require(module: str, purpose: str = ""):
    """Import and return ``module`` (an optional dependency), or raise :class:`MissingExtra`.

    Example::

        transformers = require("transformers", "loading a model")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != module.split(".")[0]:
            raise  # something else is missing inside an installed package: not ours to explain
        raise missing_extra(module, purpose) from None


def script_main(main, *args) -> int:
    """Run a script's ``main(*args)``: a :class:`UserError` becomes one line on stderr and exit status 2.

    For the benchmark scripts, which are run as files (``sys.exit(script_main(main))``)."""
    import sys

    try:
        return main(*args) or 0
    except UserError as e:
        print(f"{sys.argv[0]}: error: {e}", file=sys.stderr)
        return 2
