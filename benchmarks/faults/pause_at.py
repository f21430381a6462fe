"""Run ``forwardonly <args>`` with a pause at a chosen I/O call inside one of its atomic writes.

The kill test (``kill_resume.py``) uses it to SIGKILL a training run at an exact
point of a checkpoint write (between two files, between the two renames of the
directory swap, ...), which a kill at a random time almost never hits.

Every write of :mod:`forwardonly.io` starts with ``tempfile.mkdtemp`` (prefix
``.NAME.tmp<pid>.``): that call opens write number ``n`` (0-based) of
destination ``NAME``, and the I/O calls that follow it (``os.mkdir``,
``torch.save``, ``safetensors.torch.save_file``, ``Path.write_text``,
``os.fsync``, ``os.replace``, ``shutil.rmtree``) are its operations
``0, 1, ...`` until the next write opens. Nothing is changed but the pause:
the process writes ``--marker`` (what it paused at) and sleeps until killed.

    python benchmarks/faults/pause_at.py --count writes.json -- train model.name=... out_dir=run
    python benchmarks/faults/pause_at.py --write 3 --op 5 --when after --marker m.json -- train ...
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time

_HOOKED = [(os, "mkdir"), (os, "fsync"), (os, "replace"), (shutil, "rmtree"), (pathlib.Path, "write_text")]


class Injector:
    """Counts the atomic writes and their I/O calls; pauses at (write, op, before|after) if asked."""

    def __init__(self, write: int | None = None, op: int | None = None, when: str = "before",
                 marker: str | None = None):
        self.target = (write, op, when)
        self.marker = marker
        self.writes: list[dict] = []

    def install(self) -> None:
        import safetensors.torch
        import torch

        real_mkdtemp = tempfile.mkdtemp

        def mkdtemp(*args, **kw):
            prefix = kw.get("prefix") or ""
            m = re.match(r"^\.(.+)\.tmp\d+\.$", prefix)
            if m:
                self.writes.append({"dest": m.group(1), "ops": []})
            return real_mkdtemp(*args, **kw)

        tempfile.mkdtemp = mkdtemp
        for owner, name in [*_HOOKED, (torch, "save"), (safetensors.torch, "save_file")]:
            setattr(owner, name, self._wrap(getattr(owner, name), f"{getattr(owner, '__name__', owner)}.{name}"))

    def _wrap(self, fn, label: str):
        def hooked(*args, **kw):
            if not self.writes:
                return fn(*args, **kw)
            n, ops = len(self.writes) - 1, self.writes[-1]["ops"]
            k = len(ops)
            ops.append(label)
            self._maybe_pause(n, k, "before", label)
            try:
                return fn(*args, **kw)
            finally:  # after it, whether it returned or raised (Path.mkdir(exist_ok=True) catches FileExistsError)
                self._maybe_pause(n, k, "after", label)

        return hooked

    def _maybe_pause(self, n: int, k: int, when: str, label: str) -> None:
        if self.target != (n, k, when):
            return
        info = {"write": n, "dest": self.writes[n]["dest"], "op": k, "call": label, "when": when,
                "pid": os.getpid()}
        tmp = f"{self.marker}.part"
        with open(tmp, "w") as f:  # (builtins.open is not hooked)
            f.write(json.dumps(info))
        os.rename(tmp, self.marker)
        while True:
            time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", help="write the atomic writes and their I/O calls to this JSON file at exit")
    p.add_argument("--write", type=int, help="0-based index of the atomic write to pause in")
    p.add_argument("--op", type=int, help="0-based index of the I/O call within that write")
    p.add_argument("--when", choices=("before", "after"), default="before")
    p.add_argument("--marker", help="file written when the pause begins")
    p.add_argument("forwardonly_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    rest = args.forwardonly_args[1:] if args.forwardonly_args[:1] == ["--"] else args.forwardonly_args
    if (args.write is None) != (args.op is None) or (args.write is not None and not args.marker):
        p.error("--write, --op and --marker go together")
    inj = Injector(args.write, args.op, args.when, args.marker)
    inj.install()
    if args.count:
        def count():
            with open(args.count, "w") as f:  # builtins.open: not one of the counted calls
                f.write(json.dumps(inj.writes, indent=1))

        atexit.register(count)
    from forwardonly.cli.main import main as forwardonly_main

    sys.argv = ["forwardonly", *rest]
    return forwardonly_main(rest)


if __name__ == "__main__":
    sys.exit(main())
