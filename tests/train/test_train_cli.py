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
    assert main(["demo", "--no-progress", *ov("model.layers=1", "steps=2")]) == 0
    out = capsys.readouterr().out
    assert "accuracy before" in out and "accuracy after" in out and "peak memory" in out
    # a given out_dir holds the record beside the run's seed log
    assert main(["demo", "--no-progress", *ov("model.layers=1", "steps=1", f"out_dir={tmp_path / 'mine'}")]) == 0
    rec = json.loads((tmp_path / "mine" / "record.json").read_text())
    assert (tmp_path / "mine" / "seedlog.json").is_file() and rec["results"]["forwards"] == 2
    assert rec["results"]["step"] == 1 and rec["config"]["out_dir"] == str(tmp_path / "mine")
    assert len(rec["results"]["load_avg"]["end"]) == 3 and rec["results"]["train_examples"] > 0


def test_demo_writes_a_record_that_pins_its_run(ov, tmp_path, capsys):
    """``forwardonly demo --record DIR``: the README's demo figures come from this record; a second run adds a
    second file, never replaces the first."""
    args = ["demo", "--no-progress", "--record", str(tmp_path), *ov("model.layers=1", "steps=2", "batch_size=4")]
    assert main(args) == 0 and main(args) == 0
    out = capsys.readouterr().out
    # two files, whatever their names' order (two runs within a second get a suffixed name)
    first, second = sorted((json.loads(p.read_text()) for p in tmp_path.glob("demo.*.json")),
                           key=lambda r: r["created"])
    rec = first
    assert rec["name"] == "demo" and rec["config"]["steps"] == 2 and rec["config"]["scheme"]["name"] == "bitfit"
    res = rec["results"]
    assert res["step"] == 2 and res["test_after"]["n"] == 16 and res["peak_rss_bytes"] > 0
    assert f"before  {100 * res['test_before']['accuracy']:6.2f} %" in out
    assert res["total_time_s"] >= res["run_time_s"] > 0 and rec["command"]["argv"] and rec["git"]["commit"]
    assert second["name"] == "demo" and second["results"]["step"] == 2


def test_demo_with_a_probe_head_says_what_the_before_accuracy_is(ov, tmp_path, capsys):
    args = ["demo", "--no-progress", "--record", str(tmp_path),
            *ov("model.layers=1", "steps=1", "model.kind=classifier", "model.head_init=linear_probe",
                "model.head_standardize=true")]
    assert main(args) == 0
    out = capsys.readouterr().out
    rec = json.loads(next(tmp_path.glob("demo.*.json")).read_text())
    head = rec["results"]["head_init"]
    assert head["layer"] == "score" and head["examples"] == rec["results"]["train_examples"] == 64
    assert "head score: linear probe on 64 training examples" in out
    assert "(the fitted head, before any step)" in out


def test_a_demo_with_no_step_scores_its_fitted_head_once(ov, tmp_path, capsys, monkeypatch):
    """``forwardonly demo steps=0`` with a fitted head: the head is what it learned; the test split is scored
    once, and the record's before and after are that one score."""
    import forwardonly.lm.train as train_mod

    calls = []
    real = train_mod._Run.score

    def counting(self, split, limit):
        calls.append(split)
        return real(self, split, limit)

    monkeypatch.setattr(train_mod._Run, "score", counting)
    assert main(["demo", "--no-progress", "--record", str(tmp_path),
                 *ov("model.layers=1", "steps=0", "model.kind=classifier", "model.head_init=linear_probe")]) == 0
    out = capsys.readouterr().out
    rec = json.loads(next(tmp_path.glob("demo.*.json")).read_text())
    res = rec["results"]
    assert rec["config"]["steps"] == 0 and rec["config"]["model"]["layers"] == 1
    assert res["step"] == 0 and res["forwards"] == 0 and res["test_after"] == res["test_before"]
    assert calls == ["test"]  # scored once: no step changed the weights between before and after
    assert f"accuracy         {100 * res['test_after']['accuracy']:6.2f} %   (the fitted head; no zeroth-order step" in out
    assert "accuracy before" not in out
