"""Atomic file writes: a crash never leaves a half-written checkpoint or cache.

Everything is written to a temporary file in the destination's directory,
flushed and fsynced, then moved over the destination with :func:`os.replace`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """Where forwardonly keeps what it builds once (converted models, kernels, fetched data):
    ``$FORWARDONLY_CACHE``, else ``~/.cache/forwardonly``."""
    return Path(os.environ.get("FORWARDONLY_CACHE") or Path.home() / ".cache" / "forwardonly")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike):
    """Yield a temporary path next to ``dest``; on success it replaces ``dest``.

    Works for files and for directories (a directory destination is replaced
    as a whole; an existing one is moved aside first and removed afterwards).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent)) / dest.name
    try:
        yield tmp
        if tmp.is_dir():
            old = None
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
                os.replace(dest, old)
            os.replace(tmp, dest)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def atomic_write_json(dest: str | os.PathLike, obj) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_torch(obj, dest: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file. Load it back with ``weights_only=True``."""
    import torch

    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)


def atomic_save_safetensors(tensors: dict, dest: str | os.PathLike, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(dest) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
