"""Every kind of figure ``forwardonly report`` makes is legible at native size: bounded pixel size, at most
MAX_SERIES bars or lines per panel, no legend over an axes area, no overlapping tick labels."""

import json
import struct
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from test_report import run_dir, train_rec

from forwardonly.bench import plots, report

MAX_W, MAX_H = 1700, 2400  # pixels: a laptop screen's width; taller figures scroll
BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def png_size(path) -> tuple[int, int]:
    data = Path(path).read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def many_runs() -> list[dict]:
    """13 optimizers x 2 schemes x 2 tasks x 2 budgets x 2 seeds: more series than one panel may hold."""
    runs = []
    for task in ("sentiment", "qa"):
        for scheme in ("full", "lora"):
            for i in range(13):
                for budget in (20, 400):
                    for seed in range(2):
                        rec = train_rec(f"opt-{i:02d}", seed, 0.5 + 0.01 * i + 0.001 * seed + budget / 4000,
                                        scheme=scheme)
                        rec["config"]["task"]["name"] = task
                        rec["config"]["budget_forwards"] = budget
                        rec["results"]["forwards"] = budget
                        rec["results"]["history"] = [{"step": k, "forwards": budget * k // 4, "loss": 1 / k}
                                                     for k in range(1, 5)]
                        runs.append(rec)
    return runs


def series_counts(fig) -> list[int]:
    out = []
    for ax in fig.axes:
        bars = sum(len(c) for c in ax.containers if type(c).__name__ == "BarContainer")
        lines = sum(1 for line in ax.get_lines() if not line.get_label().startswith("_"))
        out.append(bars + lines)
    return out


def check(fig, path: Path):
    assert plots.layout_problems(fig) == []
    assert max(series_counts(fig)) <= plots.MAX_SERIES
    plots.save(fig, path)
    w, h = png_size(path)
    assert 300 <= w <= MAX_W and 200 <= h <= MAX_H, (path.name, w, h)


def test_every_training_figure_is_legible(tmp_path):
    loaded = report.Loaded()
    loaded.records["train_run"] = many_runs()
    made = plots.plans(loaded)
    assert [n for n, _ in made] == ["accuracy_qa.png", "accuracy_sentiment.png", "accuracy_vs_forwards.png",
                                   "loss_vs_forwards.png", "train_memory.png"]
    for name, draw in made:
        fig = draw()
        if name.startswith("accuracy_") and name != "accuracy_vs_forwards.png":
            # 13 optimizers per scheme x budget -> panels of 7 and 6, never one of 13
            assert sorted(series_counts(fig)) == [6] * 4 + [7] * 4
        check(fig, tmp_path / name)


def test_one_panel_with_a_full_legend_clears_the_title(tmp_path):
    """One task and scheme, 12 optimizers over two budgets: one short row of panels beside a 12-entry legend."""
    runs = [r for r in many_runs() if r["config"]["task"]["name"] == "qa" and r["config"]["scheme"]["name"] == "full"
            and r["config"]["optim"]["name"] < "opt-12"]
    draw = plots.accuracy_vs_forwards_plan(runs)
    fig = draw()
    assert len(fig.axes) == 1 and series_counts(fig) == [12]
    check(fig, tmp_path / "one_panel.png")


def test_a_run_directory_curve_is_legible(tmp_path):
    loaded = report.load_results(run_dir(tmp_path / "run"))
    (name, draw), = plots.plans(loaded)
    assert name == "curves.png"
    fig = draw()
    assert [ax.get_title() for ax in fig.axes] == ["loss", "lr", "train_time_s"]
    check(fig, tmp_path / name)


def test_the_check_catches_a_legend_over_the_data_and_crowded_ticks():
    plt = plots.plt_module()
    fig, ax = plt.subplots(figsize=(4, 3))
    for i in range(5):
        ax.plot([1, 2], [i, i], label=f"series {i}")
    ax.legend(loc="center")
    ax.set_xticks([1, 1.01, 1.02], ["a long label", "another long label", "a third"])
    fig.suptitle("a title across the whole figure")
    fig.legend(["x"], loc="upper center")
    problems = plots.layout_problems(fig)
    plt.close(fig)
    assert any("legend 1 overlaps axes 0" in p for p in problems)
    assert any("legend 0 overlaps the figure's title" in p for p in problems)
    assert any("tick labels overlap" in p for p in problems)


def test_log_forwards_axis_has_no_minor_labels():
    plt = plots.plt_module()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([20, 200, 2000, 20000], [1, 2, 3, 4])
    plots.set_forwards_axis(ax, [20, 200, 2000, 20000])
    fig.canvas.draw()
    assert ax.get_xscale() == "log"
    assert not [t for t in ax.xaxis.get_ticklabels(which="minor") if t.get_text()]
    assert plots.layout_problems(fig) == []
    plt.close(fig)


def test_zo_bench_memory_figure_is_legible(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("zo_bench_report", BENCH / "zo_bench" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rec = json.loads((BENCH / "zo_bench" / "results" / "memory.json").read_text())
    fig = mod.memory_plan([rec])()
    check(fig, tmp_path / "memory.png")
