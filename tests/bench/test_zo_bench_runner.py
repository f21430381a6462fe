"""benchmarks/zo_bench/run.py: every file validated before anything runs; a crashed run is recorded, not fatal."""

import json
from pathlib import Path

import pytest

from forwardonly.errors import UserError

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "zo_bench"


@pytest.fixture(scope="module")
def runner(benchmark_script):
    return benchmark_script("zo_bench/run.py")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Enough of a model directory for validation, which resolves the model but loads nothing."""
    path = tmp_path_factory.mktemp("fake-model")
    (path / "config.json").write_text("{}")
    return path


def suite(root: Path, model, experiments: dict, pending=()) -> tuple[Path, Path]:
    defaults = root / "defaults.yaml"
    defaults.write_text(f"model: {{name: '{model}'}}\ntask: {{max_train: 32, max_test: 8}}\nbatch_size: 4\n"
                        "steps: 2\neval_batch_size: 8\nvalidate: false\nthreads: 1\n")
    for name, text in experiments.items():
        (root / "experiments" / name).mkdir(parents=True)
        (root / "experiments" / name / "overrides.yaml").write_text(text)
        if name in pending:
            (root / "experiments" / name / "NOT_IMPLEMENTED.md").write_text("later\n")
    return defaults, root / "experiments"


def test_unknown_key_fails_before_anything_runs_naming_the_file(runner, model_dir, tmp_path, capsys):
    defaults, exps = suite(tmp_path, model_dir, {"a-ok": "optim: {name: zo-sgd}\n",
                                                "b-bad": "task: {name: sentiment}\noptim: {nme: zo-sgd}\n"})
    with pytest.raises(UserError, match=r"b-bad/overrides.yaml:2: unknown key 'optim.nme'"):
        runner.validate(defaults, runner.discover(exps), [])
    out = tmp_path / "results"
    code = runner.main(["--experiments", str(exps), "--defaults", str(defaults), "--results", str(out)])
    assert code == 2 and "b-bad/overrides.yaml:2" in capsys.readouterr().err and not out.exists()


def test_missing_model_fails_naming_the_file(runner, model_dir, tmp_path):
    defaults, exps = suite(tmp_path, model_dir, {"a": f"model: {{name: '{tmp_path}/no/such/model'}}\n"})
    with pytest.raises(UserError, match=r"a/overrides.yaml: model path not found"):
        runner.validate(defaults, runner.discover(exps), [])


def test_not_implemented_folders_are_skipped(runner, model_dir, tmp_path):
    defaults, exps = suite(tmp_path, model_dir, {"a": "optim: {name: zo-sgd}\n",
                                                "b": "optim: {name: zo-sgd-block}\n"}, pending=("b",))
    configs, pending = runner.validate(defaults, runner.discover(exps), ["steps=3"])
    assert list(configs) == ["a"] and configs["a"]["steps"] == 3 and [p.name for p in pending] == ["b"]


@pytest.mark.slow
@pytest.mark.integration
def test_a_crashed_run_is_recorded_and_the_next_one_runs(runner, tiny_dir, tmp_path):
    defaults, exps = suite(tmp_path, tiny_dir, {"a-crash": "task: {train_split: nope}\n",
                                                "b-ok": "optim: {name: zo-sgd, lr: 1e-3}\n"})
    out = tmp_path / "results"
    code = runner.main(["--experiments", str(exps), "--defaults", str(defaults), "--results", str(out),
                        "--seeds", "0", "--jobs", "2"])
    assert code == 1
    (crash_path,) = out.glob("a-crash.seed0.*.json")
    crashed = json.loads(crash_path.read_text())
    assert crashed["status"] == "failed" and "has no split 'nope'" in crashed["error"]
    (ok_path,) = out.glob("b-ok.seed0.*.json")
    ok = json.loads(ok_path.read_text())
    assert ok["status"] == "ok" and ok["seed"] == 0 and ok["config"]["model"]["name"] == str(tiny_dir)
    res = ok["results"]
    assert res["forwards"] == 4 and "accuracy" in res["test_before"] and "accuracy" in res["test_after"]
    assert res["memory"]["peak_rss"] > 0 and res["wall_time_s"] > 0 and {"git", "versions", "machine"} <= set(ok)
    assert ok["command"]["child"].startswith("run.py --child") and ok["command"]["cwd"]
    (line,) = [json.loads(x) for x in (out / "invocations.jsonl").read_text().splitlines()]
    assert line["jobs"] == 2 and line["runs"] == 2 and line["failed"] == 1 and line["wall_time_s"] > 0
    # a second invocation keeps the ok result, re-runs only the failed one, and logs its own line
    assert runner.main(["--experiments", str(exps), "--defaults", str(defaults), "--results", str(out),
                        "--seeds", "0"]) == 1
    lines = [json.loads(x) for x in (out / "invocations.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["runs"] == 1 and lines[1]["jobs"] == 1
    # the failed run's first record is still there, unchanged, beside the new one: nothing is overwritten
    assert len(list(out.glob("a-crash.seed0.*.json"))) == 2 and json.loads(crash_path.read_text()) == crashed
    assert list(out.glob("b-ok.seed0.*.json")) == [ok_path]


def test_an_ok_record_of_the_same_config_is_kept_any_other_is_not(runner, tmp_path):
    cfg = {"steps": 2, "seed": 0, "optim": {"name": "zo-sgd"}}
    (tmp_path / "a.seed0.20270101T000000Z.json").write_text(json.dumps({"status": "failed", "config": cfg}))
    assert runner.ok_record(tmp_path, "a", cfg) is None
    (tmp_path / "a.seed0.20270102T000000Z.json").write_text(json.dumps({"status": "ok", "config": cfg}))
    assert runner.ok_record(tmp_path, "a", cfg).name == "a.seed0.20270102T000000Z.json"
    assert runner.ok_record(tmp_path, "a", {**cfg, "steps": 3}) is None  # another config: runs again
    assert runner.ok_record(tmp_path, "a", {**cfg, "seed": 1}) is None
    (tmp_path / "a.seed0.json").write_text(json.dumps({"status": "ok", "config": cfg}))  # the old naming
    assert runner.ok_record(tmp_path, "a", cfg).name == "a.seed0.20270102T000000Z.json"


def test_shipped_experiments_validate(runner):
    from forwardonly.models import zoo

    if zoo.cached("smollm2-135m") is None:
        pytest.skip("smollm2-135m is not cached")
    configs, pending = runner.validate(runner.DEFAULTS, runner.discover(), [])
    # 4 tasks x (4 schemes x 9 + 4 enhancement folders: block-wise, sparse, hybrid, hybrid's ablation)
    assert len(configs) == 4 * (4 * 9 + 4) and not pending
    assert {c["optim"]["name"] for c in configs.values()} >= {"zo-sgd", "zo-adam", "forward-grad", "fo-adam",
                                                              "zo-sgd-block", "zo-sgd-sparse", "zo-sgd-hybrid"}
