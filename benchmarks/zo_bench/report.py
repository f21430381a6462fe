"""ZO-Bench's README block and plots, from the committed records only (nothing is re-run).

    python benchmarks/zo_bench/report.py            # print the block
    python benchmarks/zo_bench/report.py --write    # rewrite README.md's generated block and report/*.png

The accuracy table and its plots are ``forwardonly report``'s (every ``forwardonly
train`` record under ``results/``; a group's runs are every record of it). What
is this suite's own: the memory sweep of ``memory.py`` and issue 4's targets at
batch 16 x 256 tokens. Memory is whole-process peak RSS first: over the whole
measurement (loading included) where the record has it, then over the one
step; the baseline-subtracted and anonymous figures follow, labelled.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLOTS = HERE / "report"
# the targets of issue 4, at batch 16 x 256 tokens, full-parameter SmolLM2-135M
TARGET_POINT = (16, 256)
TARGETS = (("fo-adam", "zo-sgd", ">=", 4.0), ("zo-sgd", "inference", "<=", 1.1))
METHOD_ORDER = ("inference", "zo-sgd", "fo-sgd", "fo-adam", "fo-adam-lora", "fo-adam-ckpt", "fo-lomo", "fo-lomo-ckpt",
                "fo-adalomo", "fo-galore", "fo-galore-ckpt")
# memory-efficient first-order baselines whose peak ZO-SGD's is stated against (issue 23)
BASELINES = ("fo-adam-ckpt", "fo-lomo", "fo-lomo-ckpt", "fo-adalomo", "fo-galore", "fo-galore-ckpt")
MiB = 2**20


def is_memory_sweep(rec: dict) -> bool:
    res = rec.get("results")
    return isinstance(res, dict) and isinstance(res.get("rows"), list) and "baseline" in res


def memory_points(recs: list[dict]) -> dict[tuple, dict]:
    """``{(method, batch, seq): {"peak_rss": [...], "whole_run": [...], ...}}`` over every sweep record."""
    from forwardonly.bench.report import finite

    out: dict[tuple, dict] = {}
    for rec in recs:
        for r in rec["results"]["rows"]:
            if r.get("status", "ok") != "ok" or not r.get("peak_rss"):
                continue
            p = out.setdefault((r["method"], r["batch"], r["seq"]), {k: [] for k in (
                "peak_rss", "whole_run", "above", "peak_anon", "step_s")})
            p["peak_rss"].append(r["peak_rss"])
            if finite([r.get("peak_rss_before_step")]):  # loading and set-up: recorded since the records pin code
                p["whole_run"].append(max(r["peak_rss"], r["peak_rss_before_step"]))
            base = (rec["results"].get("baseline") or {}).get("rss")
            if base:
                p["above"].append(r["peak_rss"] - base)
            p["peak_anon"] += finite([r.get("peak_anon")])
            p["step_s"] += finite([r.get("step_s")])
    return out


def memory_ratios(points: dict, point: tuple[int, int] = TARGET_POINT) -> list[dict]:
    """Issue 4's targets at ``point``: ratios of medians, on whole-run peak RSS (when measured), on the
    step's peak RSS, and on the step's peak above the baseline."""
    from forwardonly.bench.report import median

    at = {m: p for (m, b, s), p in points.items() if (b, s) == tuple(point)}
    out = []
    for num, den, op, bound in TARGETS:
        if num not in at or den not in at:
            continue
        ratio = {}
        for key in ("whole_run", "peak_rss", "above"):
            a, b = median(at[num][key]), median(at[den][key])
            ratio[key] = a / b if b and not math.isnan(a) and not math.isnan(b) else None
        judged = "whole_run" if ratio["whole_run"] is not None else "peak_rss"
        value = ratio[judged]
        met = value >= bound if op == ">=" else value <= bound
        out.append({"ratio": f"{num} / {den}", "target": f"{op} {bound:g}", **ratio, "judged_on": judged,
                    "met": met})
    return out


def memory_table(recs: list[dict]) -> str:
    from forwardonly.bench.report import spread, table

    points = memory_points(recs)

    def order(key):
        m, b, s = key
        return b, s, METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m

    rows = [[m, b, s, spread(p["whole_run"], 1 / MiB, 0) if p["whole_run"] else "pending",
             spread(p["peak_rss"], 1 / MiB, 0), spread(p["above"], 1 / MiB, 0), spread(p["peak_anon"], 1 / MiB, 0),
             spread(p["step_s"]), len(p["peak_rss"])] for (m, b, s), p in sorted(points.items(), key=lambda kv: order(kv[0]))]
    bases = [r["results"]["baseline"] for r in recs if (r["results"].get("baseline") or {}).get("rss")]
    text = table(["method", "batch", "seq", "whole-run peak RSS MiB (loading included)",
                  "peak RSS during the step MiB (whole process)", "step peak above baseline MiB",
                  "step peak anon MiB", "step s", "runs"], rows)
    if bases:
        text = ("Baseline (interpreter, libraries, weights paged in; separate process): "
                f"{spread([b['rss'] for b in bases], 1 / MiB, 0)} MiB RSS, "
                f"{spread([b.get('anon') for b in bases], 1 / MiB, 0)} MiB anonymous. Medians over "
                f"{len(recs)} sweep record{'s' if len(recs) > 1 else ''}; \"pending\": the record predates the "
                "whole-run reading (re-measure with `memory.py`).\n\n" + text)
    failed = [f"{r['method']} {r['batch']}x{r['seq']}: {str(r.get('error'))[-200:]}"
              for rec in recs for r in rec["results"]["rows"] if r.get("status", "ok") != "ok"]
    if failed:
        text += "\n\nFailed points: " + "; ".join(failed)
    return text


def ratio_table(recs: list[dict]) -> str:
    from forwardonly.bench.report import table

    def f(v):
        return "pending" if v is None else f"{v:.2f}"

    rows = [[r["ratio"], r["target"], f(r["whole_run"]), f(r["peak_rss"]), f(r["above"]),
             ("met" if r["met"] else "missed") + ("" if r["judged_on"] == "whole_run"
                                                  else " on the step's peak (whole-run peak pending)")]
            for r in memory_ratios(memory_points(recs))]
    if not rows:
        return ""
    b, s = TARGET_POINT
    return table([f"ratio at {b}x{s}", "target", "whole-run peak RSS", "step peak RSS (whole process)",
                  "step peak RSS above baseline", "verdict"], rows)


def baseline_ratio_table(recs: list[dict], point: tuple[int, int] = TARGET_POINT) -> str:
    """ZO-SGD's peak as a fraction of each memory-efficient baseline's at ``point``, from the sweeps that
    measured both (ratios of medians; below 1: ZO needs less)."""
    from forwardonly.bench.report import median, table

    rows = []
    for base in BASELINES:
        pairs = [(memory_points([rec]), rec) for rec in recs]
        both = [p for p, _ in pairs if ("zo-sgd", *point) in p and (base, *point) in p]
        if not both:
            continue
        cells = []
        for key in ("whole_run", "peak_rss"):
            zo = [v for p in both for v in p[("zo-sgd", *point)][key]]
            fo = [v for p in both for v in p[(base, *point)][key]]
            cells.append(f"{median(zo) / median(fo):.2f}" if zo and fo else "pending")
        rows.append([f"zo-sgd / {base}", *cells, len(both)])
    if not rows:
        return ""
    b, s = point
    return (f"ZO-SGD against the memory-efficient first-order baselines at {b}x{s} (sweeps that measured both):\n\n"
            + table(["ratio", "whole-run peak RSS", "step peak RSS (whole process)", "sweeps"], rows))


def memory_plan(recs: list[dict]):
    """Step peak RSS against sequence length (at batch 1) and against batch size (at 256 tokens)."""
    from forwardonly.bench.report import median

    points = memory_points(recs)
    if not points:
        return None

    def draw():
        from matplotlib.ticker import NullFormatter

        from forwardonly.bench.plots import grid

        methods = [m for m in METHOD_ORDER if any(k[0] == m for k in points)]
        fig, axes = grid(2, 4.6, 3.4, ncols=2, legend_rows=len(methods))
        for ax, (fixed, value, vary) in zip(axes, ((1, 1, 2), (2, 256, 1))):
            xs = set()
            for method in methods:
                pts = sorted((k[vary], median(p["peak_rss"]) / MiB) for k, p in points.items()
                             if k[0] == method and k[fixed] == value)
                if len(pts) > 1:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
                    xs |= {p[0] for p in pts}
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(xs), [str(x) for x in sorted(xs)])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("sequence length (tokens)" if vary == 2 else "batch size")
            ax.set_ylabel("peak RSS during one step, MiB")
            ax.set_title(f"{'batch' if fixed == 1 else 'sequence length'} = {value}")
            ax.grid(alpha=0.3)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", frameon=False)
        fig.suptitle("SmolLM2-135M, full-parameter: whole-process peak RSS of one training step")
        return fig

    return draw


def _records(rs):
    from forwardonly.bench.report import kind_of

    recs = rs.glob("results/*")
    return [r for r in recs if kind_of(r) == "train_run"], [r for r in recs if is_memory_sweep(r)]


def plans(rs) -> list[tuple[str, object]]:
    from forwardonly.bench.plots import plans as generic
    from forwardonly.bench.report import Loaded

    runs, sweeps = _records(rs)
    loaded = Loaded()
    loaded.records["train_run"] = runs
    out = generic(loaded)
    draw = memory_plan(sweeps)
    return out + ([("memory.png", draw)] if draw else [])


def blocks(rs) -> dict[str, str]:
    """README.md's generated block ``report``, from the records of ``rs`` (a RecordSet of this folder)."""
    from forwardonly.bench.report import failed_table, train_table

    runs, sweeps = _records(rs)
    n_ok = sum(1 for r in runs if r.get("status", "ok") == "ok")
    parts = [f"## Accuracy per task x scheme x optimizer\n\n{n_ok} finished runs, {len(runs) - n_ok} failed. "
             "Test metric in %, median [min-max] over the runs (every record is one run; a single figure: "
             "all runs agree); zero-shot is the same model before training; peak RSS is the whole run's "
             "(loading and scoring included).\n\n" + train_table(runs)]
    failed = failed_table(runs)
    if failed:
        parts.append("### Failed runs\n\n" + failed)
    if sweeps:
        parts.append("## Memory (`memory.py`)\n\n" + memory_table(sweeps) + "\n\n" + ratio_table(sweeps)
                     + "\n\n" + baseline_ratio_table(sweeps))
    parts.append("## Plots\n\n" + "\n".join(f"![{Path(n).stem}](report/{n})" for n, _ in plans(rs)))
    return {"report": "\n\n".join(parts)}


def write_plots(rs) -> None:
    from forwardonly.bench.plots import save

    PLOTS.mkdir(exist_ok=True)
    for name, draw in plans(rs):
        save(draw(), PLOTS / name)


if __name__ == "__main__":
    from forwardonly.bench.blocks import suite_main

    sys.exit(suite_main(HERE, blocks, also_write=write_plots))
