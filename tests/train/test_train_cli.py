"""``forwardonly train/eval/demo`` from the command line: exit codes, outputs, one-line errors."""

import json

from forwardonly.cli.main import main


def test_train_then_eval_the_run_and_its_seed_log(ov, tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *ov("steps=3", "optim.lr=1e-3", f"out_dir={out}")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 3 and (out / "seedlog.json").is_file() and (out / "metrics.jsonl").is_file()
    assert main(["eval", "--no-progress", "--run", str(out)]) == 0
    from_ckpt = json.loads(capsys.readouterr().out)
    assert from_ckpt["accuracy"] == summary["test_after"]["accuracy"]
    assert main(["eval", "--no-progress", "--seedlog", str(out / "seedlog.json"), *ov()]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == summary["test_after"]["accuracy"]


def test_unknown_key_fails_with_the_valid_keys(ov, tiny_dir, tmp_path, capsys):
    assert main(["train", *ov("optim.learning_rate=1", f"out_dir={tmp_path / 'x'}")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'optim.learning_rate'" in err and "optim.lr" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_bad_config_file_line_is_named(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("steps: 3\noptim:\n  lr: fast\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert f"{cfg}:3" in capsys.readouterr().err


def test_missing_zoo_model_suggests_fetch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FORWARDONLY_CACHE", str(tmp_path))
    assert main(["eval", "model.name=smollm2-135m"]) == 2
    assert "forwardonly models fetch smollm2-135m" in capsys.readouterr().err


def test_demo_runs_end_to_end_on_a_tiny_model(ov, tiny_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--no-progress", *ov("steps=2")]) == 0
    out = capsys.readouterr().out
    assert "accuracy before" in out and "accuracy after" in out and "peak memory" in out
    # its record, in a new out_dir of its own
    (path,) = tmp_path.glob("runs/demo/*/record.json")
    rec = json.loads(path.read_text())
    res = rec["results"]
    assert res["forwards"] == 4 and res["step"] == 2 and res["test_after"]["n"] == 16
    assert 0 <= res["test_before"]["accuracy"] <= 1 and res["peak_rss_bytes"] > 0
    assert res["total_time_s"] >= res["run_time_s"] >= res["train_time_s"] > 0
    assert rec["config"]["steps"] == 2 and rec["git"]["commit"] and rec["versions"]["torch"]
    assert rec["command"]["argv"][:2] == ["forwardonly", "demo"] and len(res["load_avg"]["end"]) == 3
    # a given out_dir holds the record beside the run's seed log
    assert main(["demo", "--no-progress", *ov("steps=1", f"out_dir={tmp_path / 'mine'}")]) == 0
    assert (tmp_path / "mine" / "record.json").is_file() and (tmp_path / "mine" / "seedlog.json").is_file()
