"""Atomic writes (forwardonly.io): what a kill or a full disk leaves behind, and what recover() makes of it."""

import errno
import os
import subprocess
import sys

import pytest
import torch

from forwardonly import io
from forwardonly.errors import RunError, WriteError


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def make_dir(path, text):
    path.mkdir()
    (path / "a.txt").write_text(text)


def test_directory_write_replaces_the_old_one_and_leaves_nothing_else(tmp_path):
    dest = tmp_path / "ckpt"
    for text in ("one", "two"):
        with io.atomic_path(dest) as tmp:
            make_dir(tmp, text)
    assert (dest / "a.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_kill_between_the_two_renames_is_undone_by_recover(tmp_path):
    """A writer killed after moving the old directory aside, before moving the new one in."""
    pid = dead_pid()
    make_dir(tmp_path / f".ckpt.old{pid}", "previous")
    scratch = tmp_path / f".ckpt.tmp{pid}.x1y2"  # its finished but never renamed new copy
    scratch.mkdir()
    make_dir(scratch / "ckpt", "new, never committed")
    io.recover(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "a.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_recover_removes_a_stale_old_copy_when_the_new_one_is_in_place(tmp_path):
    pid = dead_pid()
    make_dir(tmp_path / "ckpt", "new")
    make_dir(tmp_path / f".ckpt.old{pid}", "old, half removed")
    io.recover(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_recover_leaves_a_live_writer_alone(tmp_path):
    live = tmp_path / f".ckpt.tmp{os.getppid()}.abcd"  # our parent process is alive
    live.mkdir()
    io.recover(tmp_path / "ckpt")
    assert live.is_dir() and not (tmp_path / "ckpt").exists()


def test_a_failed_write_raises_and_keeps_the_previous_file(tmp_path):
    dest = tmp_path / "x.json"
    io.atomic_write_text(dest, "previous")
    with pytest.raises(ValueError), io.atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise ValueError("writer bug")  # not a write failure: passes through unchanged
    assert dest.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_full_disk_names_the_destination(tmp_path, monkeypatch):
    dest = tmp_path / "ckpt"
    with io.atomic_path(dest) as tmp:
        make_dir(tmp, "previous")

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError) as e, io.atomic_path(dest) as tmp:
        tmp.mkdir()
        torch.save({"w": torch.ones(3)}, tmp / "w.pt")
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, (OSError, RunError))
    assert str(e.value) == f"cannot write {dest}: No space left on device; {dest} was left as it was"
    assert (dest / "a.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_write_errors_are_recognised_from_each_writer(tmp_path, monkeypatch):
    dest = tmp_path / "f"
    # safetensors reports I/O errors in its message; torch.save as a RuntimeError without errno
    se = io.write_error(dest, RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert se.errno == errno.ENOSPC
    monkeypatch.setattr(io, "_nearly_full", lambda path: True)
    assert io.write_error(dest, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")).errno == 28
    assert io.write_error(dest, OSError(errno.EROFS, "Read-only file system")).errno == errno.EROFS
    monkeypatch.setattr(io, "_nearly_full", lambda path: False)
    assert io.write_error(dest, RuntimeError("unexpected pos 576 vs 534")) is None  # not full: not ours to name
    assert io.write_error(dest, FileNotFoundError(errno.ENOENT, "no such input")) is None
    assert io.write_error(dest, ValueError("x")) is None
