"""Atomic file writes: a crash never leaves a half-written checkpoint or cache.

Everything is written to a temporary file (or directory) in the destination's
directory, fsynced, then moved over the destination with :func:`os.replace`,
and the directory entry is fsynced too. A file is replaced in one rename. A
directory cannot be renamed over a non-empty one, so the old directory is
first moved aside (``.NAME.old<pid>``), the new one moved in, and the old one
removed; a process killed between those two renames leaves no ``NAME`` but a
whole old copy beside it, and :func:`recover` (run before every write and by
the checkpoint loader) moves it back. Leftovers of killed writers (their
temporary directories) are removed by the same call; the process id in their
names keeps a live writer's files out of reach.

A write that fails (a full disk, a quota, a read-only file system) raises
:class:`~forwardonly.errors.WriteError` naming the destination, and leaves the
destination as it was.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import WriteError

# Below this many free bytes a failed write is taken for a full disk (torch.save reports ENOSPC as a
# RuntimeError without the errno).
_FULL_BYTES = 1 << 20
# Error numbers that mean "this write cannot be done here"; other OSErrors from a writer's body (a missing
# input file, say) pass through unchanged.
_WRITE_ERRNOS = {_errno.ENOSPC, _errno.EDQUOT, _errno.EROFS, _errno.EFBIG, _errno.EIO}


def cache_root() -> Path:
    """Where forwardonly keeps what it builds once (converted models, kernels, fetched data):
    ``$FORWARDONLY_CACHE``, else ``~/.cache/forwardonly``."""
    return Path(os.environ.get("FORWARDONLY_CACHE") or Path.home() / ".cache" / "forwardonly")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike):
    """Yield a temporary path next to ``dest``; on success it replaces ``dest``.

    Works for files and for directories (a directory destination is replaced
    as a whole, see the module docstring).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp{os.getpid()}.", dir=dest.parent))
    tmp = scratch / dest.name
    try:
        try:
            yield tmp
            _fsync_tree(tmp)
        except Exception as e:
            err = write_error(dest, e, scratch)
            if err is None or err is e:
                raise
            raise err from e
        if tmp.is_dir():
            old = None
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old{os.getpid()}")
                os.replace(dest, old)
            os.replace(tmp, dest)  # a crash before this line: recover() puts `old` back
            _fsync_dir(dest.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def recover(dest: str | os.PathLike) -> None:
    """Undo what a killed :func:`atomic_path` left next to ``dest``.

    ``dest`` missing and an old copy moved aside by a dead writer: the old copy
    becomes ``dest`` again. Old copies and temporary directories of dead
    writers are removed. Files of live processes are left alone.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    olds, scratch = [], []
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(old|tmp)(\d+)(\..*)?$")
    for entry in dest.parent.iterdir():
        m = pattern.match(entry.name)
        if m and not process_alive(int(m.group(2))):
            (olds if m.group(1) == "old" else scratch).append(entry)
    if olds and not dest.exists():
        newest = max(olds, key=lambda p: p.stat().st_mtime_ns)
        os.replace(newest, dest)
        _fsync_dir(dest.parent)
        olds.remove(newest)
    for p in olds + scratch:
        shutil.rmtree(p, ignore_errors=True)


def write_error(dest: Path, e: BaseException, scratch: Path | None = None) -> WriteError | None:
    """The :class:`WriteError` that ``e``, raised while writing ``dest``, stands for (None: not a write failure)."""
    if isinstance(e, WriteError):
        return e
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    if code is None and not isinstance(e, OSError):
        m = re.search(r"os error (\d+)", str(e))  # safetensors' Rust I/O errors
        code = int(m.group(1)) if m else None
    if code is None and isinstance(e, RuntimeError) and _nearly_full(scratch or dest.parent):
        code = _errno.ENOSPC  # torch.save: "PytorchStreamWriter failed writing file" / "unexpected pos"
    if code not in _WRITE_ERRNOS:
        return None
    return WriteError(code, f"cannot write {dest}: {os.strerror(code)}; {dest} was left as it was")


def _nearly_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bfree * st.f_frsize < _FULL_BYTES


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` (on this host) still runs; an exited one not yet reaped by its parent does not."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # Z: a zombie
    except OSError:  # no /proc: trust kill()
        return True


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                _fsync_file(p)
        _fsync_dir(path)
    elif path.exists():
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # the rename is durable once its directory is; some file systems cannot open a directory
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
