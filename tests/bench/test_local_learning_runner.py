"""benchmarks/local_learning/run.py --keep: recorded seeds are skipped only under the same config; records are
never overwritten (a new file per invocation)."""

import json
from pathlib import Path

import pytest

from forwardonly.config import load_config, to_dict
from forwardonly.local.config import LocalConfig

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "local_learning"
EXP = BENCH / "experiments" / "ff-hard.yaml"


@pytest.fixture(scope="module")
def runner(benchmark_script):
    return benchmark_script("local_learning/run.py")


def _record(path: Path, config: dict, seeds, acc=0.88):
    runs = [{"seed": s, "test_acc": acc + s / 100, "epochs_run": 10} for s in seeds]
    rec = {"config": config, "git": {"commit": "abc", "dirty": False}, "created": "2026-01-01",
           "results": {"aggregate": {}, "runs": runs}}
    path.write_text(json.dumps(rec))
    return rec


def test_kept_runs_same_config_only_the_seeds_asked_for(runner, tmp_path):
    cfg = to_dict(load_config(LocalConfig, EXP))
    _record(tmp_path / "ff-hard.json", cfg, [0, 1])
    _record(tmp_path / "ff-hard.20270101T000000Z.json", cfg, [2])  # a later invocation's record counts too
    _record(tmp_path / "ff-hard-1000.json", {**cfg, "hidden": [1000, 1000]}, [0])  # another experiment
    src = runner.kept_runs(tmp_path, "ff-hard", cfg, [0, 2])
    assert src == [{"file": "ff-hard.20270101T000000Z.json", "seeds": [2], "git": {"commit": "abc", "dirty": False},
                    "created": "2026-01-01"},
                   {"file": "ff-hard.json", "seeds": [0], "git": {"commit": "abc", "dirty": False},
                    "created": "2026-01-01"}]
    assert runner.kept_runs(tmp_path, "ff-hard", cfg, [3]) is None  # nothing to keep
    assert runner.kept_runs(tmp_path, "missing", cfg, [0]) is None


def test_kept_runs_fills_keys_added_since_with_their_defaults(runner, tmp_path):
    cfg = to_dict(load_config(LocalConfig, EXP))
    old = {**cfg, "ff": {k: v for k, v in cfg["ff"].items() if k != "norm"}}  # as if norm came later
    _record(tmp_path / "ff-hard.json", old, [0])
    with pytest.raises(SystemExit, match="different config"):  # ff-hard sets norm=rms, not the default
        runner.kept_runs(tmp_path, "ff-hard", cfg, [0])
    src = runner.kept_runs(tmp_path, "ff-hard", {**cfg, "ff": {**cfg["ff"], "norm": "length"}}, [0])
    assert [s["seeds"] for s in src] == [[0]]


def test_kept_runs_refuses_a_different_config(runner, tmp_path):
    cfg = to_dict(load_config(LocalConfig, EXP))
    _record(tmp_path / "ff-hard.json", {**cfg, "hidden": [1000, 1000]}, [0])
    with pytest.raises(SystemExit, match="different config"):
        runner.kept_runs(tmp_path, "ff-hard", cfg, [0])


def test_keep_with_every_seed_recorded_runs_nothing(runner, tmp_path, capsys):
    cfg = to_dict(load_config(LocalConfig, EXP))
    _record(tmp_path / "ff-hard.json", cfg, [0, 1, 2])
    before = (tmp_path / "ff-hard.json").read_text()
    assert runner.main(["--only", "ff-hard", "--keep", "--jobs", "1", "--results", str(tmp_path)]) == 0
    assert "every seed kept" in capsys.readouterr().out
    assert (tmp_path / "ff-hard.json").read_text() == before and len(list(tmp_path.iterdir())) == 1
