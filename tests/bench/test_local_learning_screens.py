"""benchmarks/local_learning/report.py's screens block: medians over every screen record, unrun screens shown as
such, and a record that read the test split refused."""

import json
from pathlib import Path

import pytest

from forwardonly.bench.record import RecordSet

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "local_learning"


@pytest.fixture(scope="module")
def report(benchmark_script):
    return benchmark_script("local_learning/report.py")


def _screen(goodness: float, best: float) -> dict:
    summary = {k: {"best": best, "best_epoch": 9, "window_mean": goodness + d}
               for k, d in (("val_acc", 0.0), ("val_acc_goodness", 0.0), ("val_acc_combined", 0.01),
                            ("val_acc_probe", 0.02))}
    return {"summary": summary}


def _write(root: Path, stamp: str, screens: dict, test_read=False) -> None:
    path = root / "screens" / "results" / f"ff-round5.{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": {"screens": screens, "test_split_read": test_read}}))


def test_screens_block_medians_unrun_and_choice(report, tmp_path):
    _write(tmp_path, "20260101T000000Z", {"baseline": _screen(0.88, 0.89), "lr_2e-3": _screen(0.89, 0.90)})
    _write(tmp_path, "20260102T000000Z", {"baseline": _screen(0.90, 0.91)})
    _write(tmp_path, "20260103T000000Z", {"baseline": _screen(0.86, 0.87)})
    rs = RecordSet(tmp_path)
    text = report.screens_table(rs, "ff-round5")
    rows = {line.split(" | ")[0].strip("| *"): line for line in text.splitlines() if line.startswith("|")}
    assert "| 3 | 89.00 | 88.00 / 89.00 / 90.00 |" in rows["baseline"]  # medians of three records
    assert rows["lr_2e-3"].startswith("| **lr_2e-3** |")  # the highest window mean of val_acc
    assert rows["collab"].endswith("| 0 | not run | - |")
    assert "from 3 records" in text and len(rs.used) == 3


def test_screens_block_refuses_a_record_that_read_the_test_split(report, tmp_path):
    _write(tmp_path, "20260101T000000Z", {"baseline": _screen(0.88, 0.89)}, test_read=True)
    with pytest.raises(SystemExit, match="test split"):
        report.screens_table(RecordSet(tmp_path), "ff-round5")
