"""Validation screens: the committed screen script never reads the test split."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from forwardonly.errors import UserError
from forwardonly.local import LocalConfig
from forwardonly.local.data import load_dataset
from forwardonly.local.trainer import train

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "local_learning"


def _screen_module():
    spec = importlib.util.spec_from_file_location("local_learning_screen", BENCH / "screen.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Poison:
    """A test split that fails on any use."""

    def __len__(self):
        raise AssertionError("the test split was read")

    def __getitem__(self, item):
        raise AssertionError("the test split was read")


def test_train_without_test_score_never_reads_the_test_split():
    data = load_dataset("digits")
    data.x_test, data.y_test = _Poison(), _Poison()
    out = train(LocalConfig(algo="mf", data="digits", hidden=[16], epochs=2), data=data, score_test=False)
    assert out["test_scored"] is False and not any(k.startswith("test_acc") for k in out)


def test_screen_file_ranks_on_validation_and_records_no_test(tmp_path, monkeypatch):
    base = tmp_path / "base.yaml"
    base.write_text("algo: ff\ndata: digits\nhidden: [32]\nbatch_size: 64\nepochs: 3\n")
    screens = tmp_path / "s.yaml"
    screens.write_text("base: base.yaml\noverrides: [seed=100, patience=0]\nwindow: [2, 3]\nselect: val_acc_probe\n"
                       "screens:\n  baseline: []\n  tiny_lr: [lr=1e-6, ff.probe_lr=1e-6]\n")
    seen = []
    from forwardonly.local.ff import ForwardForward

    real = ForwardForward.evaluate
    monkeypatch.setattr(ForwardForward, "evaluate", lambda self, x, y, b=1024: seen.append(len(y)) or real(self, x, y, b))
    mod = _screen_module()
    assert mod.main([str(screens), "--out-dir", str(tmp_path / "out")]) == 0
    (rec_path,) = (tmp_path / "out").glob("s.*.json")
    rec = json.loads(rec_path.read_text())
    assert set(seen) == {len(load_dataset("digits").y_val)}  # validation only, every epoch
    assert rec["results"]["chosen"] == "baseline" and rec["results"]["test_split_read"] is False
    # no test score anywhere in what was measured (the record's git diff may quote code that names test_acc)
    assert "test_acc" not in json.dumps(rec["results"]) and "test_acc" not in json.dumps(rec["config"])
    assert rec["command"]["argv"][1:] == [str(screens), "--out-dir", str(tmp_path / "out")]
    s = rec["results"]["screens"]["baseline"]["summary"]["val_acc_probe"]
    hist = [r["val_acc_probe"] for r in rec["results"]["screens"]["baseline"]["history"]]
    assert s["window_mean"] == pytest.approx(sum(hist[1:3]) / 2) and s["best"] == max(hist)


def test_bad_screen_file_is_named(tmp_path):
    mod = _screen_module()
    (tmp_path / "base.yaml").write_text("algo: mf\ndata: digits\nepochs: 3\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: base.yaml\nwindow: [2, 5]\nscreens:\n  a: []\n")
    with pytest.raises(UserError, match="bad.yaml: window ends at epoch 5 but screen 'a' runs 3"):
        mod.load_screen_file(bad)
    bad.write_text("base: base.yaml\nscreens:\n  a: [lr=-1]\n")
    with pytest.raises(UserError, match="Invalid learning rate"):
        mod.load_screen_file(bad)


def test_shipped_screen_files_load():
    mod = _screen_module()
    files = sorted((BENCH / "screens").glob("*.yaml"))
    assert files
    for f in files:
        assert mod.load_screen_file(f)["screens"]
