"""benchmarks/convergence: layered experiment files, one new record per run, and the headline figures."""

import importlib.util
import json
from pathlib import Path

import pytest

from forwardonly.bench import convergence as conv
from forwardonly.errors import UserError

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "convergence"


@pytest.fixture(scope="module")
def runner(benchmark_script):
    return benchmark_script("convergence/run.py")


def write(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_layers_merge_outermost_first_and_an_optimizer_replaces_the_outer_one(runner, tiny_dir, tmp_path):
    exps = write(tmp_path / "experiments", {
        "S/defaults.yaml": f"model: {{name: '{tiny_dir}'}}\ntask: {{max_length: 32}}\nbatch_size: 4\n"
                           "optim: {name: zo-sgd, lr: 1.0e-3, eps: 1.0e-2}\n",
        "S/c/defaults.yaml": "task: {shots_per_class: 2}\nbudget_forwards: 40\n",
        "S/c/mezo/overrides.yaml": "optim: {lr: 2.0e-3}\n",
        "S/c/fo/overrides.yaml": "optim: {name: fo-adam, lr: 1.0e-4}\n",
    })
    assert runner.discover(exps) == ["S/c/fo", "S/c/mezo"]
    mezo = runner.resolve_config("S/c/mezo", ["steps=7"], exps)
    assert mezo["optim"]["lr"] == 2e-3 and mezo["optim"]["eps"] == 1e-2 and mezo["steps"] == 7
    assert mezo["task"]["max_length"] == 32 and mezo["task"]["shots_per_class"] == 2 and mezo["budget_forwards"] == 40
    fo = runner.resolve_config("S/c/fo", [], exps)
    assert fo["optim"]["name"] == "fo-adam" and "eps" not in fo["optim"]


def test_a_bad_key_stops_everything_naming_its_file(runner, tiny_dir, tmp_path, capsys):
    exps = write(tmp_path / "experiments", {"S/defaults.yaml": f"model: {{name: '{tiny_dir}'}}\n",
                                            "S/a/overrides.yaml": "steps: 1\n",
                                            "S/b/overrides.yaml": "steps: 1\noptim: {nme: zo-sgd}\n"})
    with pytest.raises(UserError, match=r"S/b/overrides.yaml:2: unknown key 'optim.nme'"):
        runner.validate(runner.discover(exps), [], exps)
    out = tmp_path / "results"
    assert runner.main(["--experiments", str(exps), "--results", str(out)]) == 2
    assert "S/b/overrides.yaml:2" in capsys.readouterr().err and not out.exists()


def test_seeds_that_are_not_integers_are_named(runner, tiny_dir, tmp_path, capsys):
    exps = write(tmp_path / "experiments", {"S/a/overrides.yaml": f"model: {{name: '{tiny_dir}'}}\nsteps: 1\n"})
    out = tmp_path / "results"
    assert runner.main(["--experiments", str(exps), "--results", str(out), "--seeds", "0,x"]) == 2
    assert "--seeds '0,x': not a comma-separated list of integers" in capsys.readouterr().err and not out.exists()


def test_a_run_writes_a_new_record_with_its_curve_and_is_not_repeated(runner, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "SCRATCH", tmp_path / "scratch")
    exps = write(tmp_path / "experiments", {
        "S/defaults.yaml": f"model: {{name: '{tiny_dir}'}}\ntask: {{max_train: 16, max_eval: 8, max_test: 8}}\n"
                           "batch_size: 4\neval_batch_size: 8\nthreads: 1\nsteps: 4\n",
        "S/c/mezo/overrides.yaml": "optim: {name: zo-sgd, lr: 1.0e-3}\ntest_every: 2\n"})
    out = tmp_path / "results"
    args = ["--experiments", str(exps), "--results", str(out), "--seeds", "3"]
    assert runner.main(args) == 0
    (path,) = out.glob("S/c/mezo.seed3.*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and rec["experiment"] == "S/c/mezo" and rec["seed"] == 3
    assert [p["forwards"] for p in rec["results"]["test_curve"]] == [4, 8]
    assert rec["results"]["forwards"] == 8 and rec["results"]["peak_rss_bytes"] > 0
    assert rec["load_avg"]["median"] >= 0 and rec["paused_s"] == 0 and "--seeds" in rec["command"]["argv"]
    assert rec["train_time_excludes_pauses"] is True
    assert not (tmp_path / "scratch" / "S" / "c" / "mezo.seed3" / "checkpoint").exists()
    assert runner.main(args) == 0 and len(list(out.glob("S/c/mezo.seed3.*.json"))) == 1  # done: skipped
    assert runner.main([*args, "--again"]) == 0 and len(list(out.glob("S/c/mezo.seed3.*.json"))) == 2


def test_ms_per_forward_leaves_out_what_an_older_record_spent_stopped():
    rec = {"results": {"train_time_s": 1300.0, "forwards": 1000}, "paused_s": 300.0}
    assert conv.train_time(rec) == 1000.0  # the older runner's pause fell inside a step
    assert conv.train_time({**rec, "train_time_excludes_pauses": True}) == 1300.0  # the clock already left it out
    assert conv.train_time({"results": {"train_time_s": 5.0}}) == 5.0


def _state(pid):
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_pause_while_stops_a_run_only_while_its_file_exists(runner, tmp_path):
    import subprocess
    import sys
    import threading
    import time

    flag, total = tmp_path / "QUIET", tmp_path / "paused_s"
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    stop, paused = threading.Event(), [0.0]
    guard = threading.Thread(target=runner._quiet_guard, args=(p, stop, paused, flag, 0.05, total), daemon=True)
    try:
        guard.start()
        time.sleep(0.3)
        assert _state(p.pid) != "T" and paused[0] == 0  # no file: the run goes on
        flag.touch()
        time.sleep(0.5)
        assert _state(p.pid) == "T"  # stopped while the file exists
        flag.unlink()
        time.sleep(0.5)
        assert _state(p.pid) != "T" and paused[0] >= 0.3  # continued, the pause counted
        assert float(total.read_text()) == pytest.approx(paused[0])  # what the child's clock leaves out
    finally:
        stop.set()
        p.kill()
        p.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_pause_inside_a_timed_step_is_left_out_of_its_time(runner, tmp_path):
    import subprocess
    import sys
    import threading
    import time

    script = f"""
import importlib.util, signal, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("r", {str(BENCH / "run.py")!r})
r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)
clock = r.PausedClock(Path({str(tmp_path / "paused_s")!r}))
signal.signal(signal.SIGCONT, clock.on_continue)
print("ready", flush=True)
t0, w0, n = clock(), time.perf_counter(), 0
while time.process_time() < 1.0:   # one second of work, however long it is stopped
    n += 1
print(clock() - t0, time.perf_counter() - w0, flush=True)
"""
    flag = tmp_path / "QUIET"
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    stop, paused = threading.Event(), [0.0]
    guard = threading.Thread(target=runner._quiet_guard, args=(p, stop, paused, flag, 0.05, tmp_path / "paused_s"),
                             daemon=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        guard.start()
        flag.touch()
        time.sleep(1.5)
        flag.unlink()
        timed, wall = map(float, p.stdout.readline().split())
    finally:
        stop.set()
        p.kill()
        p.wait()
    assert paused[0] >= 1.0 and wall >= timed + 1.0  # it was stopped inside the timed work
    assert timed == pytest.approx(wall - paused[0], abs=0.15)  # and the clock left exactly the pause out


def _rec(exp, seed, points, *, before=0.6, steps=1000, lr=1e-3, secs_per_fwd=0.1, validate=False):
    """A synthetic final-run record whose test curve passes through ``points`` [(forwards, accuracy)]."""
    res = {"test_before": {"accuracy": before}, "forwards": points[-1][0] if points else 0,
           "train_time_s": secs_per_fwd * (points[-1][0] if points else 0), "peak_rss_bytes": 2**30}
    if validate:
        res["evals"] = [{"forwards": f, "accuracy": a} for f, a in [(0, before), *points]]
    else:
        res["test_curve"] = [{"forwards": f, "train_time_s": secs_per_fwd * f, "accuracy": a} for f, a in points]
        res["test_after"] = {"accuracy": points[-1][1] if points else before}
    return {"name": f"convergence/{exp}", "experiment": exp, "seed": seed, "status": "ok",
            "config": {"steps": steps, "optim": {"name": "x", "lr": lr}, "scheme": {}, "task": {}}, "results": res}


def test_headline_reads_forwards_to_mezo_final_off_median_curves():
    grid = [200, 400, 600, 800, 1000]
    recs = [_rec("E/k16/mezo", s, list(zip(grid, [0.70, 0.75, 0.79, 0.80, 0.80 + 0.002 * s]))) for s in range(3)]
    recs += [_rec("E/k16/fast", s, list(zip(grid, [0.81, 0.82, 0.83, 0.84, 0.85])), secs_per_fwd=0.2)
             for s in range(3)]
    recs += [_rec("E/k16/slow", s, list(zip(grid, [0.6, 0.6, 0.6, 0.6, 0.6]))) for s in range(3)]
    recs += [_rec("E/k16/fo-adam", s, [(100, 0.86), (200, 0.87)]) for s in range(3)]
    recs += [_rec("E/k16/lp", s, [], before=0.55, steps=0) for s in range(3)]
    rows = {r[0]: r for r in conv.headline_rows(conv.by_cell(recs, ("final", "probe"))["E/k16"])}
    # MeZO's median final is 0.802, first reached by its median curve at 1000 forwards
    assert rows["mezo"][5] == "1000" and rows["mezo"][6] == "1.00"
    assert rows["fast"][5] == "200" and rows["fast"][6] == "0.20" and rows["fast"][8] == "200"
    assert rows["slow"][6] == "not reached"
    assert rows["fast"][7] == "-2.0" and rows["lp"][7] == "-32.0" and rows["lp"][3] == "55.0 [55.0, 55.0]"
    assert rows["mezo"][3] == "80.2 [80.0, 80.4]" and rows["mezo"][9] == "+0.2"  # last 20 %: 800 -> 1000
    assert list(rows)[:2] == ["lp", "mezo"]
    # paired with the probe of the same seed: mezo's seeds end at 80.0, 80.2, 80.4 against 55.0 each
    assert rows["mezo"][11] == "+25.2 [+25.0, +25.4]" and rows["lp"][11] == "-"
    head, seeds = conv.seed_rows(conv.by_cell(recs, ("final", "probe"))["E/k16"])
    assert head == ["seed", "lp", "mezo", "fast", "slow", "fo-adam"]
    assert seeds[2] == [2, "55.00", "80.40", "85.00", "60.00", "87.00"]
    text = conv.render(recs + [_rec("E/k16/sweep/mezo-lr1e-4", 0, [(500, 0.7), (1000, 0.75)], validate=True)])
    assert "| 2 | 55.00 | 80.40 | 85.00 | 60.00 | 87.00 |" in text
    assert "### E/k16" in text and "| mezo-lr1e-4 | x | 0.001 | 1000 | 1 | 60.0 | 75.0 |" in text


def test_report_command_renders_the_section_and_plots(tmp_path):
    from forwardonly.cli.main import main

    res = tmp_path / "results"
    res.mkdir()
    grid = [100, 200, 300]
    for s in range(2):
        for m, acc in (("mezo", [0.7, 0.75, 0.76]), ("fo-adam", [0.8, 0.85, 0.86])):
            (res / f"{m}.{s}.json").write_text(json.dumps(_rec(f"E/k16/{m}", s, list(zip(grid, acc)))))
    pytest.importorskip("matplotlib")
    assert main(["report", str(res), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Convergence" in text and "curves_E_k16.png" in text and (tmp_path / "out" / "curves_E_k16.png").is_file()
    assert "Accuracy per task x scheme x optimizer" not in text


def test_suite_report_block_cites_the_records_and_its_figure_reads(tmp_path):
    """benchmarks/convergence/report.py: the README block claims.py regenerates, from a folder of records."""
    from forwardonly.bench.record import RecordSet

    spec = importlib.util.spec_from_file_location("convergence_report", BENCH / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pilot = _rec("E/k16/pilot/fzoo-lr1e-6", 0, [(100, 0.7)], validate=True, secs_per_fwd=0.5)
    pilot["results"]["history"] = [{"loss": 0.70}, {"loss": float("nan")}, {"loss": 0.65}]
    recs = {"E/k16/pilot/fzoo.json": pilot, "E/k16/mezo.json": _rec("E/k16/mezo", 0, [(100, 0.7), (200, 0.8)]),
            "E/k16/lp.json": _rec("E/k16/lp", 0, [], before=0.55, steps=0)}
    write(tmp_path, {f"results/{k}": json.dumps(v) for k, v in recs.items()})
    rs = RecordSet(tmp_path)
    text = mod.blocks(rs)["report"]
    # the non-finite loss is left out of the loss column and counts the run as diverged
    assert "| fzoo-lr1e-6 | x | 0.001 | 100 | 1 | 60.0 | 70.0 | 0.700 -> 0.650 | 500 | 1 |" in text
    assert "![curves_E_k16](report/curves_E_k16.png)" in text and len(rs.used) == 3

    pytest.importorskip("matplotlib")
    from forwardonly.bench.plots import layout_problems

    ((name, draw),) = conv.plot_plans(list(rs.glob("results/*")))
    fig = draw()
    assert name == "curves_E_k16.png" and layout_problems(fig) == []


@pytest.mark.parametrize(("losses", "diverged"), [([0.15, 0.2, 0.1], False), ([0.15, 1.4, 0.1], False),
                                                  ([0.15, 1.6, 0.1], True), ([0.15, 149.0], True),
                                                  ([0.7, float("inf")], True), ([], False)])
def test_a_run_whose_loss_rose_tenfold_or_went_non_finite_counts_as_diverged(losses, diverged):
    rec = {"results": {"history": [{"loss": x} for x in losses]}}
    assert conv.diverged_run(rec) is diverged


def test_a_sweep_gets_a_figure_of_its_validation_curves_one_panel_per_optimizer(tmp_path):
    pytest.importorskip("matplotlib")
    from forwardonly.bench.plots import layout_problems

    recs = [_rec("E/k16/sweep/mezo-lr1e-4", 0, [(500, 0.70), (1000, 0.74)], validate=True, lr=1e-4),
            _rec("E/k16/sweep/mezo-lr1e-3", 0, [(500, 0.60), (1000, 0.45)], validate=True, lr=1e-3),
            _rec("E/k16/sweep/fo-adam-lr1e-4", 0, [(50, 0.75)], validate=True, lr=1e-4),
            _rec("E/k16/mezo", 0, [(100, 0.7), (200, 0.8)]),
            _rec("E/k16/sweep/mezo-lrauto-b", 0, [(500, 0.71)], validate=True, lr="auto"),
            _rec("E/k16/sweep/mezo-lrauto-a", 0, [(500, 0.72)], validate=True, lr="auto")]
    recs[1]["results"]["history"] = [{"loss": 0.15}, {"loss": 149.0}]
    for r, optim in zip(recs, ("zo-sgd", "zo-sgd", "fo-adam", "zo-sgd", "zo-sgd", "zo-sgd")):
        r["config"]["optim"]["name"] = optim
    plans = dict(conv.plot_plans(recs))
    assert sorted(plans) == ["curves_E_k16.png", "sweep_E_k16.png"]
    fig = plans["sweep_E_k16.png"]()
    assert layout_problems(fig) == []
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert sorted(panels) == ["fo-adam", "zo-sgd"]
    lines = panels["zo-sgd"].get_lines()  # ordered by learning rate, the diverged one dashed, lr: auto by name
    assert [ln.get_label() for ln in lines] == ["lr 0.0001", "lr 0.001 (diverged)", "lr auto (mezo-lrauto-a)",
                                                "lr auto (mezo-lrauto-b)"]
    assert [ln.get_linestyle() for ln in lines] == ["-", "--", "-", "-"]
    assert list(lines[1].get_ydata()) == pytest.approx([60.0, 60.0, 45.0])


def test_a_validation_only_run_outside_sweep_is_a_pilot_whatever_its_folder():
    final = _rec("D/cell/demo/mezo", 0, [(100, 0.8)])
    val_only = _rec("D/cell/demo/mezo", 0, [(100, 0.8)], validate=True)
    val_only["config"].update(validate=True, test=False)
    head_only = _rec("D/cell/demo/lp", 0, [], steps=0, validate=True)
    head_only["config"].update(validate=True, test=False)
    kinds = [conv.kind_of_run(r) for r in (final, val_only, head_only, _rec("D/cell/lp", 0, [], steps=0),
                                             _rec("D/cell/sweep/m", 0, [(1, 0.5)], validate=True))]
    assert kinds == ["final", "pilot", "pilot", "probe", "sweep"]
    text = conv.render([val_only, head_only])
    assert "Pilot (validation only)" in text and "| lp | x | - | 0 | 1 | 60.0 | 60.0 |" in text
    assert "| mezo | x | 0.001 | 100 | 1 | 60.0 | 80.0 |" in text
