"""benchmarks/step_overhead/same_code.json: the commits it groups really share the timed code."""

import json
import subprocess
from itertools import combinations
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAME = ROOT / "benchmarks" / "step_overhead" / "same_code.json"


def _has(commit: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT,
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("group", json.loads(SAME.read_text())["groups"], ids=lambda g: g["commits"][0][:7])
def test_grouped_commits_have_identical_timed_code(group):
    assert len(group["commits"]) >= 2 and group["paths"]
    if not all(_has(c) for c in group["commits"]):
        pytest.skip("this checkout lacks the history of a grouped commit (a shallow clone)")
    for a, b in combinations(group["commits"], 2):
        diff = subprocess.run(["git", "diff", "--stat", a, b, "--", *group["paths"]], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
        assert diff == "", f"{a[:10]} and {b[:10]} differ in {group['paths']}:\n{diff}"


def test_the_report_puts_grouped_commits_in_one_row():
    import importlib.util

    spec = importlib.util.spec_from_file_location("so_report", ROOT / "benchmarks" / "step_overhead" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    group = json.loads(SAME.read_text())["groups"][0]["commits"]
    assert mod.code_of(group[0]) == mod.code_of(group[1][:12]) == ", ".join(c[:10] for c in group)
    assert mod.code_of("0123456789abcdef") == "0123456789"
