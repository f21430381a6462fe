"""benchmarks/claims.py: the committed READMEs trace to committed records, and the check fails, naming the
number, when a README number, a generated table or a cited record's pinning goes wrong."""

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def claims(benchmark_script):
    return benchmark_script("claims.py")


def test_the_committed_readmes_trace_to_records(claims):
    found = claims.run(REPO)
    assert found.failures == []
    assert len(found.cited) >= 600  # every suite's tables cite their records
    # the known legacy exceptions are reported, not hidden
    assert any("dirty without a diff" in w for w in found.warnings)
    assert not any("has no record yet" in w for w in found.warnings)  # the demo's figures are recorded now


def test_untraced_numbers_stale_tables_and_unpinned_records_fail(claims, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("*.png", "__pycache__"))
    readme = (REPO / "README.md").read_text()
    # a new result sentence with no record, and a traced figure changed by hand
    readme = readme.replace("## Benchmarks\n", "## Benchmarks\n\nZO is now 3.5x faster.\n")
    assert "0.70x bf16 ZO" in readme
    (root / "README.md").write_text(readme.replace("0.70x bf16 ZO", "0.31x bf16 ZO"))
    # a generated table edited by hand
    so = root / "benchmarks" / "step_overhead" / "README.md"
    so.write_text(so.read_text().replace("1.168 [1.085-1.239] (4 runs, missed)", "1.085 (4 runs, met)", 1))
    # a hand-made table outside any generated block
    off = root / "benchmarks" / "offload" / "README.md"
    off.write_text(off.read_text() + "\n| run | peak |\n|---|---|\n| best | 0.1x |\n")
    # a cited record that is dirty without a diff and not on the legacy list
    allow = json.loads((root / "benchmarks" / "claims_allow.json").read_text())
    off_rec = "benchmarks/offload/results/tinyllama-1.1b.json"
    for entry in allow["dirty_records"]:
        entry["records"] = [r for r in entry["records"] if r != off_rec]
    (root / "benchmarks" / "claims_allow.json").write_text(json.dumps(allow))

    failures = claims.run(root).failures
    text = "\n".join(failures)
    assert "'3.5x' traces to no record" in text and "ZO is now" in text
    # the reworded sentence no longer traces, and neither does any number in it
    assert "a traced sentence is missing or reworded" in text and "'0.31x' traces to no record" in text
    assert "benchmarks/step_overhead/README.md: block 'tables' differs" in text and "+| 1x64, 1 thread, 2026-12-01 | 4" in text
    assert "benchmarks/offload/README.md" in text and "table outside a generated block" in text
    assert f"{off_rec}: cited by a README but does not pin its code" in text
    assert len(failures) == 8  # the five above, and the reworded sentence's three numbers with units


def test_a_record_that_stores_its_diff_is_pinned(claims, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "benchmarks", root / "benchmarks", ignore=shutil.ignore_patterns("*.png", "__pycache__"))
    shutil.copy(REPO / "README.md", root / "README.md")
    allow = json.loads((root / "benchmarks" / "claims_allow.json").read_text())
    rec_path = "benchmarks/offload/results/tinyllama-1.1b.json"
    for entry in allow["dirty_records"]:
        entry["records"] = [r for r in entry["records"] if r != rec_path]
    (root / "benchmarks" / "claims_allow.json").write_text(json.dumps(allow))
    rec = json.loads((root / rec_path).read_text())
    rec["git"].update(diff="diff --git a/x b/x\n", untracked=[])
    (root / rec_path).write_text(json.dumps(rec))
    assert claims.run(root).failures == []
