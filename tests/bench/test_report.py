"""``forwardonly report``: result JSON -> tables and plots, kinds from content, bad files named."""

import json
from pathlib import Path

import pytest

from forwardonly.bench import report
from forwardonly.cli.main import main
from forwardonly.errors import UserError

REPO = Path(__file__).resolve().parents[2]
MiB = 2**20


def train_rec(opt, seed, acc, before=0.5, scheme="lora", steps=50, status="ok", **res):
    cfg = {"model": {"name": "m"}, "scheme": {"name": scheme}, "task": {"name": "sentiment"},
           "optim": {"name": opt, "lr": 1e-4}, "steps": steps, "budget_forwards": 100, "seed": seed,
           "out_dir": None}
    results = {} if status != "ok" else {
        "test_after": {"accuracy": acc, "n": 200}, "forwards": 100, "train_time_s": 10.0 + seed,
        "peak_rss_bytes": (1000 + seed) * MiB,
        "history": [{"step": 5, "forwards": 10, "loss": 0.7}, {"step": 10, "forwards": 20, "loss": 0.6}], **res}
    if before is not None and status == "ok":
        results["test_before"] = {"accuracy": before, "n": 200}
    rec = {"name": f"zo_bench/{opt}", "experiment": f"sentiment-{scheme}-{opt}", "config": cfg,
           "results": results, "status": status, "seed": seed}
    if status != "ok":
        rec["error"] = "Traceback ...\nRuntimeError: boom | pipe\nPlease file an issue to PyTorch"
    return rec


def memory_rec():
    rows = [{"method": m, "batch": 16, "seq": 256, "status": "ok", "peak_rss": v * MiB, "peak_anon": v * MiB,
             "step_s": 1.0} for m, v in (("inference", 1000), ("zo-sgd", 1050), ("fo-adam", 5250))]
    rows.append({"method": "fo-sgd", "batch": 16, "seq": 256, "status": "failed", "error": "killed"})
    return {"name": "zo_bench/memory", "config": {}, "results": {"baseline": {"rss": 950 * MiB, "anon": 300 * MiB},
                                                                  "rows": rows}}


def local_rec():
    vals = [0.88, 0.89, 0.90]
    return {"name": "local_learning/bp", "config": {"algo": "bp", "hidden": [500, 500]},
            "results": {"aggregate": {"test_acc": {"mean": 0.89, "std": 0.01, "n": 3, "values": vals}}}}


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    (d / "runs").mkdir(parents=True)
    recs = {f"runs/zo-sgd.seed{s}.json": train_rec("zo-sgd", s, a) for s, a in enumerate((0.80, 0.90, 0.85))}
    recs.update({f"runs/fo-adam.seed{s}.json": train_rec("fo-adam", s, a, before=None)
                 for s, a in enumerate((0.90, 0.92, 0.94))})
    recs["runs/fo-adam.seed3.json"] = train_rec("fo-adam", 3, None, status="failed")
    recs["runs/zeroshot.seed0.json"] = train_rec("zero", 0, 0.55, before=None, steps=0)
    recs["memory.json"] = memory_rec()
    recs["local.json"] = local_rec()
    recs["local_memory.json"] = {"config": {}, "results": {"mlp": {"bp": {"peak_rss_above_start": 16 * MiB}}}}
    recs["other.json"] = {"hello": "world"}
    for name, rec in recs.items():
        (d / name).write_text(json.dumps(rec))
    (d / "runs" / "corrupt.json").write_text('{"config": {"optim": ')
    return d


def test_kinds_are_read_from_content(results):
    loaded = report.load_results(results)
    assert {k: len(v) for k, v in loaded.records.items()} == {"train_run": 8, "other": 3}
    assert loaded.unrecognised == [str(results / "other.json")]
    assert [p for p, _ in loaded.bad] == [str(results / "runs" / "corrupt.json")]


def test_train_table_medians_ranges_zero_shot_and_failures(results):
    table = report.train_table(report.load_results(results).records["train_run"])
    rows = {line.split(" | ")[2]: line for line in table.splitlines()[2:]}
    assert set(rows) == {"zo-sgd", "fo-adam"}  # the steps=0 zero-shot run is a reference, not a row
    # zo-sgd: 80, 90, 85 -> median 85.0, range 80-90; its own test_before 50 % in every run: one figure
    assert "| 3 | accuracy | 85.0 [80.0-90.0] | 50.0 | 100 | 11 [10-12] | 1001 [1000-1002] |  |" in rows["zo-sgd"]
    # fo-adam: no test_before of its own -> the zero-shot run's 55 %; one failed seed counted apart
    assert "| 3 | accuracy | 92.0 [90.0-94.0] | 55.0 |" in rows["fo-adam"] and rows["fo-adam"].endswith("| 1 |")


def test_two_records_of_one_experiment_are_both_counted(results):
    """A rerun writes a new record beside the old one: the table takes the median over both, never one."""
    (results / "runs" / "zo-sgd.seed0.20270101T000000Z.json").write_text(json.dumps(train_rec("zo-sgd", 0, 0.70)))
    rows = [line for line in report.train_table(report.load_results(results).records["train_run"]).splitlines()
            if "| zo-sgd |" in line]
    assert len(rows) == 1 and "| 4 | accuracy | 82.5 [70.0-90.0] |" in rows[0]


def test_spread_is_median_and_range_never_the_best():
    assert report.spread([0.80, 0.95, 0.85], 100) == "85.0 [80.0-95.0]"
    assert report.spread([0.5, 0.5], 100) == "50.0" and report.spread([], 100) == "-"
    assert report.spread([1.0, float("nan"), 3.0], digits=2) == "2.00 [1.00-3.00]"


def test_failed_runs_are_listed_with_their_error(results):
    text = report.render_markdown(report.load_results(results))
    assert "### Failed runs" in text and "RuntimeError: boom \\| pipe" in text and "fo-adam.seed3.json" in text


def test_other_records_are_summarised_by_median_over_records(tmp_path):
    for i, v in enumerate((1.0, 3.0, 2.0)):
        rec = {"name": "suite/x", "config": {"a": 1, "seed": i}, "results": {"speed": v, "inner": {"ms": 10 * v}}}
        (tmp_path / f"x.{i}.json").write_text(json.dumps(rec))
    text = report.render_markdown(report.load_results(tmp_path))
    assert "**suite/x** (3 records" in text
    assert "| speed | 2.0000 [1.0000-3.0000] | 3 |" in text and "| inner.ms | 20.0000 [10.0000-30.0000] | 3 |" in text


def test_bad_json_is_named_and_skipped_or_an_error_with_strict(results):
    text = report.render_markdown(report.load_results(results))
    assert f"`{results / 'runs' / 'corrupt.json'}`: not a readable JSON file" in text
    with pytest.raises(UserError, match="corrupt.json"):
        report.load_results(results, strict=True)
    with pytest.raises(UserError, match="results directory not found"):
        report.load_results(results / "nope")


def test_cli_writes_markdown_and_png_plots(results, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert main(["report", str(results), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "corrupt.json" in captured.err
    md = (out / "report.md").read_text()
    assert md == captured.out.rstrip("\n") + "\n"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy_sentiment.png", "loss_vs_forwards.png", "train_memory.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md


def test_cli_strict_exits_2_naming_the_file(results, capsys):
    assert main(["report", str(results), "--strict", "--no-plots"]) == 2
    assert "corrupt.json" in capsys.readouterr().err


def test_readme_block_is_replaced_and_plots_linked_relative_to_it(results, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    readme = tmp_path / "README.md"
    readme.write_text("# Bench\n\nintro\n<!-- generated:report -->\nold table\n<!-- /generated:report -->\n\nafter\n")
    assert main(["report", str(results), "--out", str(tmp_path / "report"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Bench\n\nintro\n<!-- generated:report -->\n## Accuracy")
    assert text.endswith("<!-- /generated:report -->\n\nafter\n")
    assert "old table" not in text and "](report/accuracy_sentiment.png)" in text
    (tmp_path / "plain.md").write_text("no markers\n")
    assert main(["report", str(results), "--no-plots", "--out", str(tmp_path / "r2"),
                 "--readme", str(tmp_path / "plain.md")]) == 2
    assert "no <!-- generated:report --> ... <!-- /generated:report --> block" in capsys.readouterr().err


def run_dir(path: Path, finished: bool = True) -> Path:
    path.mkdir()
    cfg = train_rec("zo-sgd", 0, 0.8)["config"]
    (path / "config.json").write_text(json.dumps(cfg))
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "forwards": 2 * s, "train_time_s": 0.5 * s} for s in (5, 10, 15)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (path / "summary.json").write_text(json.dumps({"config": cfg, "test_before": {"accuracy": 0.5, "n": 40},
                                                       "test_after": {"accuracy": 0.625, "n": 40}, "step": 15,
                                                       "forwards": 30, "history": rows}))
    return path


def test_a_run_directory_is_one_run_with_its_metrics_and_curves(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = run_dir(tmp_path / "run")
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("## One run\n\nRun `" + str(run) + "` (ok), counted as one run.")
    assert "| test_before | accuracy | 0.5 |" in md and "| test_after | accuracy | 0.625 |" in md
    assert "| last logged row (3 rows) | loss | 0.06667 |" in md and "](curves.png)" in md
    assert (tmp_path / "out" / "curves.png").is_file()
    unfinished = run_dir(tmp_path / "half", finished=False)
    text = report.render_markdown(report.load_results(unfinished))
    assert "(unfinished (no summary.json))" in text and "| last logged row (3 rows) | forwards | 30 |" in text


def test_committed_local_learning_results_render_generically():
    loaded = report.load_results(REPO / "benchmarks" / "local_learning" / "results", strict=True)
    assert len(loaded.records["other"]) >= 8 and not loaded.records["train_run"]
    assert "local_learning/bp" in report.render_markdown(loaded)


def test_records_made_before_a_config_key_existed_group_with_later_ones():
    old, new = train_rec("zo-sgd", 0, 0.8), train_rec("zo-sgd", 1, 0.9)
    new["config"]["model"]["chunk_feedforward"] = 0  # the key's default, written by a later version
    other = train_rec("zo-sgd", 2, 0.7)
    other["config"]["model"]["chunk_feedforward"] = 16  # a different setting stays its own group
    groups = report.group_runs([old, new, other])
    assert [len(g["ok"]) for g in groups] == [2, 1]


def test_zero_shot_reference_is_found_across_a_config_key_added_later():
    """A trained run recorded before ``model.chunk_feedforward`` existed takes the zero-shot of a
    ``steps: 0`` run recorded after it (same model, scheme and task at the key's default)."""
    trained = train_rec("fo-adam", 0, 0.9, before=None)
    zero = train_rec("zero", 0, 0.55, before=None, steps=0)
    zero["config"]["model"]["chunk_feedforward"] = 0
    (_, summary), = report.trained_groups([trained, zero])
    assert summary["before"] == [0.55]
    zero["config"]["model"]["chunk_feedforward"] = 16  # another setting: not the same model run
    (_, summary), = report.trained_groups([trained, zero])
    assert summary["before"] == []


def test_records_of_an_older_config_shape_still_group_by_seed():
    """Records whose config today's TrainConfig would reject (a key since moved or retyped) are compared as
    they are: seeds group, a key one of them lacks takes the value the others hold."""
    runs = [train_rec("fo-adam", s, 0.8 + s / 100) for s in range(3)]
    for r in runs:
        r["config"]["optim"].update(betas=None, density=None)  # not valid for fo-adam today
    del runs[0]["config"]["optim"]["density"]  # written before the key existed
    (g,) = report.group_runs(runs)
    assert len(g["ok"]) == 3 and g["flat"]["optim.density"] is None


def _suite_run(experiment, commit, rss_mib, times, created):
    history = [{"step": i + 1, "loss": 1.0, "train_time_s": t} for i, t in enumerate(times)]
    return {"experiment": experiment, "created": created, "status": "ok", "git": {"commit": commit, "dirty": False},
            "results": {"memory": {"peak_rss": rss_mib * 2**20}, "history": history, "step": len(times),
                        "train_time_s": times[-1], "test_after": {"accuracy": 0.5}}}


def test_step_seconds_leave_out_the_first_step():
    rec = _suite_run("a", "c" * 40, 100, [10.0, 12.0, 15.0, 19.0], "1")
    assert report.step_seconds(rec) == [2.0, 3.0, 4.0]
    one_row = {"results": {"history": [{"step": 4, "loss": 1.0, "train_time_s": 8.0}], "step": 4, "train_time_s": 8.0}}
    assert report.step_seconds(one_row) == [2.0]


def test_experiments_table_compares_with_the_reference_at_the_same_commit():
    runs = [_suite_run("ref", "a" * 40, 1000, [1.0, 2.0, 3.0], "1"), _suite_run("ref", "a" * 40, 1200, [1, 2, 3], "2"),
            _suite_run("new", "a" * 40, 550, [1.0, 3.0, 5.0], "3"),
            _suite_run("new", "b" * 40, 300, [1.0, 2.0, 3.0], "4"),  # no reference at this commit
            {"experiment": "new", "status": "failed", "git": {"commit": "a" * 40}}]
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line
            for line in report.experiments_table(runs, "ref", {"weights": 500 * 2**20}).splitlines()[2:]}
    assert set(rows) == {("ref", "aaaaaaa", "2"), ("new", "aaaaaaa", "1"), ("new", "bbbbbbb", "1")}
    ref, new, other = rows["ref", "aaaaaaa", "2"], rows["new", "aaaaaaa", "1"], rows["new", "bbbbbbb", "1"]
    assert "| 1100 [1000-1200] | 1.00 | 2.20 | 1.00 | 1.00 | - | 50.0 |" in ref
    assert "| 550 | 0.50 | 1.10 | 2.00 | 2.00 |" in new  # RSS and s/step as ratios of the medians
    assert "| 300 | - | 0.60 |" in other
