"""Self-describing result JSON: config, package versions, git state, machine."""

from __future__ import annotations

import datetime as _dt
import subprocess
from importlib import metadata
from pathlib import Path

from ..io import atomic_write_json
from .measure import machine_info

_PACKAGES = ("forwardonly", "torch", "transformers", "peft", "numpy", "accelerate", "datasets")


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


def git_state(cwd: str | Path | None = None) -> dict:
    def run(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def make_record(name: str, config: dict, results: dict, **extra) -> dict:
    """A result record: what ran, on what, with which code, and what it measured."""
    return {
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "results": results,
        "versions": versions(),
        "git": git_state(Path(__file__).resolve().parent),
        "machine": machine_info(),
        **extra,
    }


def write_record(path: str | Path, record: dict) -> None:
    atomic_write_json(path, record)
