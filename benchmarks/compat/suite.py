"""Run the default test suite under this interpreter's torch and record the outcome.

    /tmp/venv-torch2141/bin/python benchmarks/compat/suite.py --out benchmarks/compat/results/torch-2.14.1.json

The interpreter is the one whose torch is under test (a separate virtual environment with
``pip install torch==X -e ".[all,dev]"``). The record holds the torch version and build (CUDA
version of the wheel, whether a GPU was visible), pytest's counts, every failed or errored
test with the first line of its message, and the wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def counts(junit: Path) -> tuple[dict, list[dict]]:
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    out = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    bad = []
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            el = case.find(kind)
            if el is not None:
                msg = (el.get("message") or el.text or "").strip().splitlines()
                bad.append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": kind,
                            "message": msg[0][:300] if msg else ""})
    return out, bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="result record (JSON); an existing file is never overwritten")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments (default: the default suite)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        p.error(f"{out} exists; records are never overwritten")
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from forwardonly.bench.record import make_record, write_record

    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:warnings",
               f"--junitxml={junit}", *args.pytest_args]
        t0 = time.monotonic()
        res = subprocess.run(cmd, cwd=ROOT, check=False)
        seconds = time.monotonic() - t0
        summary, bad = counts(junit)
    results = {**summary, "exit_status": res.returncode, "failed_tests": bad, "seconds": round(seconds),
               "torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
               "cuda_available": torch.cuda.is_available()}
    config = {"pytest": cmd[1:], "python": sys.version.split()[0]}
    write_record(out, make_record("compat/suite", config, results,
                                  command=" ".join(["python", "benchmarks/compat/suite.py", *(argv or sys.argv[1:])])))
    print({k: v for k, v in results.items() if k != "failed_tests"})
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
