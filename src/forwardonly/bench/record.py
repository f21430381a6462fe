"""Self-describing result records: what ran (config, command), on what, with which code, what it measured.

A record pins the code that produced it. ``git`` holds the commit and, when the
working tree differs from it, the difference itself: ``git diff HEAD`` (binary
patches included, so ``git apply`` restores the tree) and every untracked file
that git does not ignore, with its hash and, for small text files, its content.
Result data (``benchmarks/*/results``, ``benchmarks/*/report``) is left out of
the diff: a grid writes new records while it runs, and those are data, not code.
``command`` holds the exact invocation: argv, working directory, interpreter and
the environment variables that change what runs (``FORWARDONLY_*``, thread counts,
allocator settings).

Records are never overwritten. :func:`write_record` creates its file exclusively
and refuses an existing path; :func:`new_record_path` gives each invocation a file
of its own, named by UTC time. Readers aggregate every record of an experiment
(:class:`RecordSet`, :mod:`forwardonly.bench.report`).

Example::

    from forwardonly.bench.record import make_record, new_record_path, write_record
    rec = make_record("my_suite/exp", {"lr": 1e-3}, {"accuracy": 0.91})
    write_record(new_record_path("benchmarks/my_suite/results", "exp"), rec)
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from ..errors import UserError
from .measure import machine_info

_PACKAGES = ("forwardonly", "torch", "transformers", "peft", "numpy", "accelerate", "datasets")
# pathspecs of result data, which a run may write while it runs: not part of the code a record pins
DATA_PATHS = ("benchmarks/*/results/**", "benchmarks/*/report/**", "benchmarks/*/screens/results/**")
# environment variables that change what a run does or how fast: recorded with the command
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
            "PYTHONPATH", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")
ENV_PREFIXES = ("FORWARDONLY_", "MALLOC_", "TORCH_")
UNTRACKED_TEXT_LIMIT = 256 * 1024  # untracked files up to this size are stored whole; larger ones by hash


def versions() -> dict:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:  # whether ZO perturbations ran through the native CPU kernel (built now if it was not yet)
        from ..optim.perturb import native as _native

        out["forwardonly_native_kernel"] = _native.status()["available"]
    except Exception:  # noqa: BLE001 - a record must never fail over this
        pass
    return out


def _git(root, *args, text=True):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=text, timeout=60, check=False)


def _untracked(root: Path, excludes: list[str]) -> list[dict]:
    out = _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", ":/", *excludes)
    files = []
    for rel in sorted(p for p in out.stdout.split("\0") if p):
        path = root / rel
        try:
            data = path.read_bytes()
        except OSError as e:  # a file that vanished or cannot be read is named, not skipped
            files.append({"path": rel, "error": str(e)})
            continue
        entry = {"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if len(data) <= UNTRACKED_TEXT_LIMIT:
            try:
                entry["content"] = data.decode("utf-8")
            except UnicodeDecodeError:
                pass
        files.append(entry)
    return files


def git_state(cwd: str | Path | None = None) -> dict:
    """Commit, whether the code differs from it, and the difference (see the module docstring)."""
    try:
        top = _git(cwd or ".", "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return {"commit": None, "dirty": None}
        root = Path(top.stdout.strip())
        head = _git(root, "rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        excludes = [f":(exclude,glob){p}" for p in DATA_PATHS]
        diff = _git(root, "diff", "HEAD", "--binary", "--", ":/", *excludes)
        if diff.returncode != 0:
            raise OSError(diff.stderr.strip())
        untracked = _untracked(root, excludes)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"commit": None, "dirty": None, "error": str(e)}
    state = {"commit": head.stdout.strip(), "dirty": bool(diff.stdout or untracked), "excluded": list(DATA_PATHS)}
    if state["dirty"]:
        state.update(diff=diff.stdout, diff_sha256=hashlib.sha256(diff.stdout.encode()).hexdigest(),
                     untracked=untracked)
    return state


def command_info(argv: list[str] | None = None) -> dict:
    """The exact invocation: argv, working directory, interpreter, and the environment that matters."""
    env = {k: v for k, v in sorted(os.environ.items()) if k in ENV_KEYS or k.startswith(ENV_PREFIXES)}
    return {"argv": list(sys.argv if argv is None else argv), "cwd": os.getcwd(), "python": sys.executable,
            "env": env}


def make_record(name: str, config: dict, results: dict, *, command: dict | None = None, **extra) -> dict:
    """A result record: what ran, on what, with which code, and what it measured.

    ``command`` defaults to this process's (:func:`command_info`); a runner whose measurement runs in a
    child process passes the invocation that started it."""
    return {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or command_info(),
        "config": config,
        "results": results,
        "versions": versions(),
        "git": git_state(Path(__file__).resolve().parent),
        "machine": machine_info(),
        **extra,
    }


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def new_record_path(directory: str | Path, stem: str, suffix: str = ".json") -> Path:
    """``directory/stem.<UTC time>.json``, a name no file has yet (``-2``, ``-3``... within one second)."""
    directory = Path(directory)
    base = f"{stem}.{timestamp()}"
    path, n = directory / f"{base}{suffix}", 1
    while path.exists():
        n += 1
        path = directory / f"{base}-{n}{suffix}"
    return path


def write_record(path: str | Path, record: dict) -> Path:
    """Write ``record`` to ``path``, which must not exist: never overwrites (exclusive create).

    The JSON is written and fsynced under a temporary name, then hard-linked to ``path``, so a reader
    never sees half a record and an existing file is never replaced. Raises :class:`UserError` naming
    the path when it exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise UserError(f"{path}: a record already exists there; records are never overwritten "
                            "(choose a new name, or leave --out out for a timestamped one)") from None
        except OSError:  # a filesystem without hard links: exclusive create instead
            try:
                with open(path, "x") as f:
                    f.write(text)
            except FileExistsError:
                raise UserError(f"{path}: a record already exists there; records are never overwritten") from None
    finally:
        os.unlink(tmp)
    return path


def refuse_existing(path: str | Path | None) -> None:
    """Stop before a run starts when its output record already exists (the write would refuse it later)."""
    if path is not None and Path(path).exists():
        raise UserError(f"{path}: a record already exists there; records are never overwritten "
                        "(choose a new name, or leave --out out for a timestamped one)")


class RecordSet:
    """The committed records of one results folder, read once, with a note of which ones a report used.

    ``get(rel)`` returns one record, ``glob(pattern)`` every record whose path (relative to ``root``)
    matches; each record carries its file as ``_path``.
    ``used`` is the set of paths handed out, so a claims check knows which records a table cites
    (a record that ``glob(..., prefer_pinned=True)`` passes over is not handed out)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.used: set[str] = set()
        self._cache: dict[Path, dict] = {}

    def _load(self, path: Path) -> dict:
        if path not in self._cache:
            try:
                rec = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{path}: not a readable record: {e}") from None
            rec["_path"] = str(path)
            self._cache[path] = rec
        return self._cache[path]

    def _read(self, path: Path) -> dict:
        self.used.add(str(path))
        return self._load(path)

    def get(self, rel: str) -> dict | None:
        path = self.root / rel
        return self._read(path) if path.is_file() else None

    def ok_by_experiment(self, pattern: str = "results/runs/*.json") -> dict[str, list[dict]]:
        """``{experiment: [records]}`` of the ``ok`` records matching ``pattern``, in path order."""
        out: dict[str, list[dict]] = {}
        for rec in self.glob(pattern):
            if rec.get("status") == "ok":
                out.setdefault(rec["experiment"], []).append(rec)
        return out

    def glob(self, *patterns: str, prefer_pinned: bool = False) -> list[dict]:
        """Records matching ``patterns`` (fnmatch on the path relative to ``root``; ``*`` crosses folders):
        those of the first pattern in path order, then the second's not yet listed, and so on. With
        ``prefer_pinned``, where any of them pins its code (:func:`pins_code`) only those: a re-run from a
        clean commit supersedes the legacy records that stored no diff, which stay in the folder (never
        deleted) but are no longer cited."""
        every = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*.json"))
        found = {rel: None for pat in patterns for rel in every if fnmatch.fnmatch(rel, pat)}
        paths = [self.root / rel for rel in found]
        if prefer_pinned and any(pins_code(self._load(p)) for p in paths):
            paths = [p for p in paths if pins_code(self._load(p))]
        return [self._read(p) for p in paths]


def pins_code(record: dict) -> bool:
    """Whether ``record`` pins the code that made it: a commit, and a clean tree or the stored diff."""
    git = record.get("git") or {}
    return bool(git.get("commit")) and (git.get("dirty") is False or "diff" in git)
