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


# ----------------------------------------------------------------------------- reading back, safely
# Every reader below turns a missing, truncated or corrupt file into one UserError that names the
# file (and the line, for text), instead of a library's traceback.
def _user_error(msg: str):
    from .errors import UserError

    return UserError(msg)


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """A text file as UTF-8; bytes that are not UTF-8 name the file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _user_error(f"{what} not found: {path}") from None
    except OSError as e:
        raise _user_error(f"{path}: cannot read {what} ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise _user_error(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{raw[e.start]:02x})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """A JSON file's content; invalid JSON names the file and line."""
    text = read_text_file(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _user_error(f"{path}:{e.lineno}: {what} is not valid JSON ({e.msg}; truncated?)") from None


def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict:
    """:func:`read_json` of a file that must hold one JSON object."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise _user_error(f"{path}: {what} must be a JSON object, got {type(data).__name__}")
    return data


def load_torch(path: str | os.PathLike, what: str = "checkpoint file"):
    """``torch.load(path, weights_only=True)`` on the CPU; a corrupt or truncated file names the file."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise _user_error(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:160]
        raise _user_error(f"{path}: corrupt or truncated {what} ({first})") from None


def load_safetensors(path: str | os.PathLike, what: str = "weights file") -> dict:
    """``safetensors.torch.load_file``; a corrupt or truncated file names the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise _user_error(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise _user_error(f"{path}: corrupt or truncated {what} ({str(e).strip()[:160]})") from None


def check_safetensors(path: str | os.PathLike, what: str = "weights file") -> None:
    """Open ``path``'s header without reading the tensors: a truncated file fails here, naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as e:
        raise _user_error(f"{path}: corrupt or truncated {what} ({str(e).strip()[:160]})") from None
