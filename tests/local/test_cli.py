"""The ``forwardonly local`` command: config errors, checkpoints, resume, shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forwardonly.cli.main import main
from forwardonly.config import load_config
from forwardonly.local.config import LocalConfig

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--data", "digits", "--no-progress"]
SMALL = ["hidden=[32]", "batch_size=64"]  # key=value overrides come after the options


def run(capsys, *argv):
    code = main(["local", "train", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("bad, message", [
    ("bogus=1", "unknown key 'bogus'"),
    ("lr=-1", "Invalid learning rate"),
    ("epochs=two", "epochs='two' is not a valid int"),
    ("ff.loss=magic", "ff.loss='magic' is not one of"),
    ("algo=sgd", "algo='sgd' is not one of"),
    ("lr_decay=0", "lr_decay=0.0 must be in (0, 1]"),
])
def test_bad_config_is_one_line_and_exit_2(capsys, bad, message):
    code, _, err = run(capsys, "--algo", "mf", *FAST, *SMALL, bad)
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_bad_yaml_key_names_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("algo: mf\ndata: digits\nepochz: 3\n")
    code, _, err = run(capsys, "--config", str(cfg))
    assert code == 2 and f"{cfg}:3" in err and "epochz" in err


def test_missing_fashion_mnist_says_how_to_install(tmp_path, capsys):
    code, _, err = run(capsys, "--algo", "mf", "--data", "fashion-mnist", "--data-dir", str(tmp_path))
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err


def test_resume_matches_uninterrupted_run(tmp_path, capsys):
    common = ["--algo", "ff", *FAST]  # ff: optimizers, probe and negative-label RNG must all resume
    keys = [*SMALL, "patience=0", "lr_decay=0.9"]  # the decayed lr must survive the restart too
    assert run(capsys, *common, "--out", str(tmp_path / "a"), *keys, "epochs=4")[0] == 0
    assert run(capsys, *common, "--out", str(tmp_path / "b"), *keys, "epochs=2")[0] == 0
    code, out, _ = run(capsys, *common, "--out", str(tmp_path / "b"), "--resume", *keys, "epochs=4")
    assert code == 0 and json.loads(out)["epochs_run"] == 4
    for name in ("model.safetensors", "best.safetensors"):
        a = load_file(str(tmp_path / "a" / "checkpoint" / name))
        b = load_file(str(tmp_path / "b" / "checkpoint" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    ref = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in rows] == [r["val_acc"] for r in ref]


def test_resume_refuses_a_different_config(tmp_path, capsys):
    assert run(capsys, "--algo", "mf", *FAST, "--out", str(tmp_path), *SMALL, "epochs=1")[0] == 0
    code, _, err = run(capsys, "--algo", "mf", *FAST, "--out", str(tmp_path), "--resume", *SMALL, "lr=0.5")
    assert code == 2 and "lr" in err


def test_resume_without_checkpoint(tmp_path, capsys):
    code, _, err = run(capsys, "--algo", "mf", *FAST, "--out", str(tmp_path), "--resume", *SMALL)
    assert code == 2 and "no checkpoint" in err


def test_eval_scores_best_weights(tmp_path, capsys):
    assert run(capsys, "--algo", "mf", *FAST, "--out", str(tmp_path), *SMALL, "epochs=2")[0] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert main(["local", "eval", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]


SHIPPED = sorted((ROOT / "src" / "forwardonly" / "configs" / "local").glob("*.yaml")) + sorted(
    (ROOT / "benchmarks" / "local_learning" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_says_how_to_run(path):
    load_config(LocalConfig, path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and ("forwardonly local train" in first or "run.py" in first)


def test_resume_with_weight_average_matches_uninterrupted_run(tmp_path, capsys):
    common = ["--algo", "mf", *FAST]
    keys = [*SMALL, "patience=0", "ema=0.9"]
    assert run(capsys, *common, "--out", str(tmp_path / "a"), *keys, "epochs=3")[0] == 0
    assert run(capsys, *common, "--out", str(tmp_path / "b"), *keys, "epochs=1")[0] == 0
    code, _out, _ = run(capsys, *common, "--out", str(tmp_path / "b"), "--resume", *keys, "epochs=3")
    assert code == 0
    for name in ("model.safetensors", "best.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "a" / "checkpoint" / name))
        b = load_file(str(tmp_path / "b" / "checkpoint" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weight_average_is_what_is_scored_and_kept(tmp_path, capsys):
    from forwardonly.local.trainer import train

    base = {"algo": "mf", "data": "digits", "hidden": [32], "batch_size": 64, "epochs": 1, "patience": 0,
            "seed": 0}  # one epoch: the best weights are the last ones
    plain = train(load_config(LocalConfig, None, None, base=base))
    avg = train(load_config(LocalConfig, None, None, base={**base, "ema": 0.99, "out_dir": str(tmp_path)}))
    # the raw weights train identically; the average (0.99 per step, ~25 steps) lags behind them
    raw = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(raw[k], v) for k, v in plain["model"].state_dict().items())
    ema = load_file(str(tmp_path / "checkpoint" / "ema.safetensors"))
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    assert all(torch.equal(avg["model"].state_dict()[k], ema[k]) for k in ema)  # tested with the average
    assert [r["val_acc"] for r in avg["history"]] != [r["val_acc"] for r in plain["history"]]


def test_bad_weight_average(capsys):
    code, _, err = run(capsys, "--algo", "mf", *FAST, *SMALL, "ema=1.0")
    assert code == 2 and "ema=1.0 must be in [0, 1)" in err


def test_resume_after_a_save_killed_between_its_renames(tmp_path, capsys):
    """A save killed after moving the old checkpoint aside and before putting the new one in place leaves
    ``.checkpoint.old<pid>``: resume puts it back and continues as if nothing happened."""
    import subprocess
    import sys

    common = ["--algo", "mf", *FAST]
    keys = [*SMALL, "patience=0"]
    assert run(capsys, *common, "--out", str(tmp_path / "a"), *keys, "epochs=3")[0] == 0
    assert run(capsys, *common, "--out", str(tmp_path / "b"), *keys, "epochs=2")[0] == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "b" / "checkpoint").rename(tmp_path / "b" / f".checkpoint.old{int(dead.stdout)}")
    code, out, _ = run(capsys, *common, "--out", str(tmp_path / "b"), "--resume", *keys, "epochs=3")
    assert code == 0 and json.loads(out)["epochs_run"] == 3
    a = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "b").glob(".checkpoint.*"))


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    """A checkpoint write that fails half-way (here: the optimizer state) leaves the last good checkpoint."""
    import forwardonly.local.trainer as trainer

    assert run(capsys, "--algo", "mf", *FAST, "--out", str(tmp_path), *SMALL, "patience=0", "epochs=1")[0] == 0
    before = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.torch, "save", broken)
    code, _, err = run(capsys, "--algo", "mf", *FAST, "--out", str(tmp_path), "--resume", *SMALL, "patience=0",
                       "epochs=2")
    assert code != 0
    after = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list(tmp_path.glob(".checkpoint.*"))
