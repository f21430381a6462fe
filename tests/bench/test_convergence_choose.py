"""benchmarks/convergence/choose.py: the learning rate is chosen on validation, and the final experiment says so."""

import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "convergence"


@pytest.fixture(scope="module")
def choose(benchmark_script):
    return benchmark_script("convergence/choose.py")


def _sweep(results: Path, run: str, seed: int, val: float, *, lr: float, loss: float = 0.5, test=None):
    rec = {"name": f"convergence/C/sweep/{run}", "experiment": f"C/sweep/{run}", "seed": seed, "status": "ok",
           "config": {"optim": {"name": "zo-sgd", "lr": lr}},
           "results": {"evals": [{"forwards": 0, "accuracy": 0.5}, {"forwards": 100, "accuracy": val}],
                       "history": [{"loss": 0.7}, {"loss": loss}]}}
    if test is not None:  # a sweep never scores the test split; a record that did must not sway the choice
        rec["results"]["test_after"] = {"accuracy": test}
    path = results / "C" / "sweep" / f"{run}.seed{seed}.20261206T000000Z.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def _experiment(root: Path, run: str, lr: float, extra: str = "") -> None:
    d = root / "C" / "sweep" / run
    d.mkdir(parents=True, exist_ok=True)
    (d / "overrides.yaml").write_text(f"# a comment the final does not keep\noptim: {{name: zo-sgd, lr: {lr}}}\n{extra}")


def test_the_best_median_final_validation_wins_and_test_accuracy_plays_no_part(choose, tmp_path):
    res = tmp_path / "results"
    for seed, val in enumerate([0.70, 0.60, 0.71]):  # median 0.70
        _sweep(res, "mezo-lr1e-3", seed, val, lr=1e-3, test=0.99)
    for seed, val in enumerate([0.69, 0.72, 0.72]):  # median 0.72: best, though its test figure is lower
        _sweep(res, "mezo-lr1e-4", seed, val, lr=1e-4, test=0.10)
    c = choose.choose("C", res)["mezo"]
    assert c["run"] == "mezo-lr1e-4" and c["score"][0] == pytest.approx(0.72)
    assert [t[0] for t in c["table"]] == ["mezo-lr1e-4", "mezo-lr1e-3"] and len(c["records"]) == 6


def test_a_diverged_run_never_wins_and_ties_go_to_the_lower_loss_then_the_smaller_lr(choose, tmp_path):
    res = tmp_path / "results"
    _sweep(res, "mezo-lr1e-2", 0, 0.90, lr=1e-2, loss=math.nan)  # best validation, but its loss went non-finite
    _sweep(res, "mezo-lr1e-3", 0, 0.70, lr=1e-3, loss=0.40)
    _sweep(res, "mezo-lr1e-4", 0, 0.70, lr=1e-4, loss=0.30)      # same accuracy, lower loss
    _sweep(res, "mezo-lr1e-5", 0, 0.70, lr=1e-5, loss=0.30)      # same again: the smaller lr wins
    assert choose.choose("C", res)["mezo"]["run"] == "mezo-lr1e-5"
    assert choose.choose("C", res)["mezo"]["table"][-1][0] == "mezo-lr1e-2"


def test_write_copies_the_winner_with_its_reasons_and_leaves_a_final_with_records_alone(choose, tmp_path):
    exps, res = tmp_path / "experiments", tmp_path / "results"
    _experiment(exps, "fo-adam-lr1e-4", 1e-4, "eval_every: 50   # every 50 steps\n")
    _experiment(exps, "fo-adam-lr1e-5", 1e-5, "eval_every: 50\n")
    _sweep(res, "fo-adam-lr1e-4", 0, 0.78, lr=1e-4)
    _sweep(res, "fo-adam-lr1e-5", 0, 0.74, lr=1e-5)
    c = choose.choose("C", res)["fo-adam"]
    path = choose.write_final("C", "fo-adam", c, exps, res)
    text = path.read_text()
    assert path == exps / "C" / "fo-adam" / "overrides.yaml"
    assert "sweep/fo-adam-lr1e-4" in text and "lr 1e-05: 74.0 %; lr 0.0001: 78.0 %" in text
    assert "fo-adam-lr1e-4.seed0.20261206T000000Z.json" in text and "a comment the final does not keep" not in text
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == ["optim: {name: zo-sgd, lr: 0.0001}", "eval_every: 50   # every 50 steps", "test_every: 50"]
    # once the final has runs, its file stays as those runs read it
    path.write_text("as the runs read it\n")
    (res / "C" / "fo-adam.seed0.20261206T010000Z.json").write_text("{}")
    assert choose.write_final("C", "fo-adam", c, exps, res) is None and path.read_text() == "as the runs read it\n"


def test_no_sweep_records_is_an_error(choose, tmp_path, capsys):
    assert choose.main(["E/k16", "--results", str(tmp_path)]) == 2
    assert "no sweep records for E/k16" in capsys.readouterr().err


def test_an_unknown_cell_is_named(choose, tmp_path, capsys):
    assert choose.main(["E/k17", "--results", str(tmp_path)]) == 2
    assert "E/k17: no such cell" in capsys.readouterr().err


def test_an_incomplete_sweep_is_shown_but_not_written(choose, tmp_path, capsys):
    exps, res = tmp_path / "experiments", tmp_path / "results"
    for run, lr in (("mezo-lr1e-3", 1e-3), ("mezo-lr1e-4", 1e-4), ("mezo-lr1e-5", 1e-5)):
        _experiment(exps, run, lr)
    _sweep(res, "mezo-lr1e-3", 0, 0.70, lr=1e-3)
    _sweep(res, "mezo-lr1e-4", 0, 0.75, lr=1e-4)
    c = choose.choose("C", res, exps)["mezo"]
    assert c["run"] == "mezo-lr1e-4" and c["missing"] == ["mezo-lr1e-5"] and c["edge"] is None
    assert choose.write_final("C", "mezo", c, exps, res) is None
    assert not (exps / "C" / "mezo").exists()
    assert "sweep is incomplete (no record yet: mezo-lr1e-5)" in capsys.readouterr().err


@pytest.mark.parametrize(("best", "edge"), [("mezo-lr1e-3", "largest"), ("mezo-lr1e-5", "smallest"),
                                            ("mezo-lr1e-4", None)])
def test_a_winner_at_the_edge_of_the_grid_is_flagged_in_the_final(choose, tmp_path, best, edge):
    exps, res = tmp_path / "experiments", tmp_path / "results"
    for run, lr in (("mezo-lr1e-3", 1e-3), ("mezo-lr1e-4", 1e-4), ("mezo-lr1e-5", 1e-5)):
        _experiment(exps, run, lr)
        _sweep(res, run, 0, 0.80 if run == best else 0.70, lr=lr)
    c = choose.choose("C", res, exps)["mezo"]
    assert c["run"] == best and c["edge"] == edge and c["missing"] == []
    text = choose.write_final("C", "mezo", c, exps, res).read_text()
    assert (f"the {edge} learning rate the sweep tried" in text) == (edge is not None)


def test_the_final_names_a_diverged_rate_as_diverged(choose, tmp_path):
    exps, res = tmp_path / "experiments", tmp_path / "results"
    for run, lr in (("mezo-lr1e-3", 1e-3), ("mezo-lr1e-4", 1e-4), ("mezo-lr1e-5", 1e-5)):
        _experiment(exps, run, lr)
    _sweep(res, "mezo-lr1e-3", 0, 0.45, lr=1e-3, loss=149.0)  # loss risen past 10x its first row
    _sweep(res, "mezo-lr1e-4", 0, 0.755, lr=1e-4)
    _sweep(res, "mezo-lr1e-5", 0, 0.735, lr=1e-5)
    c = choose.choose("C", res, exps)["mezo"]
    text = choose.write_final("C", "mezo", c, exps, res).read_text()
    assert "(lr 1e-05: 73.5 %; lr 0.0001: 75.5 %; lr 0.001: diverged)" in text and "-100" not in text
