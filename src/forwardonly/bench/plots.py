"""PNG plots of loaded result records (the ``plot`` extra: matplotlib, imported lazily).

Every figure is meant to be read at its native size on a laptop screen: 9-10 pt
text at 100 dpi, at most :data:`MAX_SERIES` bars or lines per panel (more are
split into further panels: one per task, scheme and budget), legends outside
every axes area, and no log-scale minor labels. :func:`layout_problems` checks
the last two with matplotlib's own bounding boxes (the tests use it on every kind
of figure). Figures show medians over runs with their range, as the tables do;
nothing here computes a number the tables do not show.

Example::

    from forwardonly.bench.plots import all_plots
    from forwardonly.bench.report import load_results
    all_plots(load_results("benchmarks/zo_bench/results"), "/tmp/plots")
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

from .figure import DPI, FONT, MAX_COLS, MAX_SERIES, grid, plt_module, save  # noqa: F401 - re-exported
from .report import Loaded, MiB, finite, group_runs, median, summarise_group, trained_groups


def chunks(items: list, size: int = MAX_SERIES) -> list[list]:
    """``items`` in consecutive parts of at most ``size``, as even as possible."""
    parts = max(1, math.ceil(len(items) / size))
    step = math.ceil(len(items) / parts)
    return [items[i:i + step] for i in range(0, len(items), step)]


def set_forwards_axis(ax, xs: list[float]) -> None:
    """Forward passes on x: log scale only over more than a decade, plain numbers, no minor labels."""
    from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

    xs = [x for x in xs if x > 0]
    if xs and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.set_xlabel("forward passes (training)")


def layout_problems(fig) -> list[str]:
    """What makes ``fig`` hard to read: a legend over an axes area or outside the figure, tick labels
    that overlap each other. Empty when it is fine."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    whole = fig.bbox
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    out = []
    titles = [fig._suptitle] if fig._suptitle is not None else []
    for i, leg in enumerate(legends):
        box = leg.get_window_extent(renderer)
        if box.x0 < whole.x0 - 1 or box.y0 < whole.y0 - 1 or box.x1 > whole.x1 + 1 or box.y1 > whole.y1 + 1:
            out.append(f"legend {i} reaches outside the figure")
        for j, ax in enumerate(fig.axes):
            if _overlap(box, ax.get_window_extent(renderer)):
                out.append(f"legend {i} overlaps axes {j} ({ax.get_title()!r})")
        if any(_overlap(box, t.get_window_extent(renderer)) for t in titles):
            out.append(f"legend {i} overlaps the figure's title")
    for j, ax in enumerate(fig.axes):
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
            boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: (b.x0, b.y0))
            for a, b in itertools.pairwise(boxes):
                if min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1:
                    out.append(f"tick labels overlap on axes {j} ({ax.get_title()!r})")
                    break
    return out


def _overlap(a, b) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 1 and min(a.y1, b.y1) - max(a.y0, b.y0) > 1


def _styles(names) -> dict:
    """A distinct (colour, line style, marker) per series name, the same in every panel of a figure."""
    plt = plt_module()
    cmap = plt.get_cmap("tab10")
    return {n: (cmap(i % 10), ("-", "--", ":")[i // 10 % 3], "osD^v"[i // 10 % 5])
            for i, n in enumerate(sorted(set(names)))}


def _label(g: dict, same: list[dict]) -> str:
    """The optimizer's name, with its learning rate where two bars of a panel share the name."""
    c = g["config"]["optim"]
    if sum(1 for o in same if o["config"]["optim"]["name"] == c["name"]) > 1:
        return f"{c['name']} (lr {c['lr']:g})"
    return c["name"]


def _budget(c: dict) -> str:
    return f"{c['budget_forwards']} forwards" if c.get("budget_forwards") else f"{c.get('steps')} steps"


# ----------------------------------------------------------------------------- training runs
def accuracy_plans(runs: list[dict]) -> list[tuple[str, object]]:
    """Per task, one figure: a panel per scheme x budget, a horizontal bar per optimizer (median test metric
    over runs, line from the lowest to the highest run), the zero-shot median as a black tick."""
    groups = [(g, s) for g, s in trained_groups(runs) if s["after"]]
    out = []
    for task in sorted({g["config"]["task"]["name"] for g, _ in groups}):
        panels: dict[tuple, list] = {}
        for g, s in groups:
            c = g["config"]
            if c["task"]["name"] == task:
                panels.setdefault((c["scheme"]["name"], c.get("budget_forwards") or 0), []).append((g, s))
        parts = [(key, part) for key, items in sorted(panels.items()) for part in chunks(items)]
        out.append((f"accuracy_{task}.png", lambda task=task, parts=parts: _accuracy_figure(task, parts)))
    return out


def _accuracy_figure(task: str, parts: list):
    longest = max(len(p) for _, p in parts)
    fig, axes = grid(len(parts), 4.6, 1.3 + 0.3 * longest)
    for ax, ((scheme, _), part) in zip(axes, parts):
        ys = list(range(len(part)))[::-1]
        med = [100 * statistics.median(s["after"]) for _, s in part]
        lo = [m - 100 * min(s["after"]) for m, (_, s) in zip(med, part)]
        hi = [100 * max(s["after"]) - m for m, (_, s) in zip(med, part)]
        ax.barh(ys, med, xerr=[lo, hi], capsize=3, color="tab:blue", height=0.65,
                label="after training: median, line = lowest to highest run")
        zs = [(y, 100 * statistics.median(s["before"])) for y, (_, s) in zip(ys, part) if s["before"]]
        if zs:
            ax.scatter([v for _, v in zs], [y for y, _ in zs], marker="|", s=260, linewidths=2.5, color="k",
                       zorder=3, label="zero-shot (median)")
        every = [v for _, s in part for v in s["after"] + s["before"]]
        ax.set_xlim(max(0.0, 100 * min(every) - 10), min(100.0, 100 * max(every) + 5))
        same = [g for g, _ in part]
        ax.set_yticks(ys, [_label(g, same) for g in same])
        ax.set_xlabel(f"{part[0][1]['metric']} % (test)")
        ax.set_title(f"{scheme}, {_budget(part[0][0]['config'])}")
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle(f"{task}: test metric after training (median over runs)")
    return fig


def _series_panels(items: list[tuple[tuple, str, object]]) -> list[tuple[tuple, list]]:
    """``[(panel key, [(series name, data), ...]), ...]`` with at most MAX_SERIES series per panel."""
    panels: dict[tuple, list] = {}
    for key, name, data in items:
        panels.setdefault(key, []).append((name, data))
    return [(key, part) for key, series in sorted(panels.items()) for part in chunks(sorted(series, key=str))]


def _line_figure(panels, styles, ylabel: str, title: str):
    """Panels of lines; the band from lowest to highest run is drawn where a panel has at most 4 lines
    (more bands on top of each other hide the lines). The legend sits beside the panels, centred, so that it
    clears the figure's title."""
    fig, axes = grid(len(panels), 3.6, 2.8, ncols=4, legend_rows=len(styles))
    for ax, (key, series) in zip(axes, panels):
        xs = []
        for name, (x, y, lo, hi) in series:
            colour, ls, marker = styles[name]
            ax.plot(x, y, marker=marker, ms=4, color=colour, ls=ls, label=name)
            if len(series) <= 4 and any(a != b for a, b in zip(lo, hi)):
                ax.fill_between(x, lo, hi, color=colour, alpha=0.15, lw=0)
            xs += x
        set_forwards_axis(ax, xs)
        ax.set_ylabel(ylabel)
        ax.set_title(", ".join(str(k) for k in key if k != ""))
        ax.grid(alpha=0.3)
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="outside right center", frameon=False)
    fig.suptitle(title)
    return fig


def accuracy_vs_forwards_plan(runs: list[dict]):
    """Per task x scheme: test metric (median, band from lowest to highest run) against forward passes spent,
    one line per optimizer (and learning rate) that ran more than one budget. ``None`` when none did."""
    pts: dict[tuple, list] = {}
    for g, s in trained_groups(runs):
        c = g["config"]
        if s["after"] and s["forwards"]:
            key = ((c["task"]["name"], c["scheme"]["name"]), c["optim"]["name"], c["optim"].get("lr"))
            pts.setdefault(key, []).append((statistics.median(s["forwards"]), 100 * statistics.median(s["after"]),
                                            100 * min(s["after"]), 100 * max(s["after"])))
    pts = {k: sorted(v) for k, v in pts.items() if len(v) > 1}
    if not pts:
        return None
    items = []
    for (panel, name, lr), p in pts.items():
        several = sum(1 for q, n, _ in pts if q == panel and n == name) > 1
        items.append((panel, f"{name} (lr {lr:g})" if several else name, tuple(list(v) for v in zip(*p))))
    return lambda: _line_figure(_series_panels(items), _styles(n for _, n, _ in items), "test % (median over runs)",
                                "test metric against forward passes (median over runs)")


def loss_vs_forwards_plan(runs: list[dict]):
    """Per task x scheme x budget: training loss (the logged means, median over runs) against forward passes."""
    items = []
    for g, _ in trained_groups(runs):
        hists = [r["results"].get("history") or [] for r in g["ok"]]
        n = min((len(h) for h in hists), default=0)
        if not n:
            continue
        c = g["config"]
        fwd = [statistics.median(h[i]["forwards"] for h in hists) for i in range(n)]
        loss = [[h[i]["loss"] for h in hists] for i in range(n)]
        data = (fwd, [median(v) for v in loss], [min(v) for v in loss], [max(v) for v in loss])
        items.append(((c["task"]["name"], c["scheme"]["name"], _budget(c)), c["optim"]["name"], data))
    if not items:
        return None
    return lambda: _line_figure(_series_panels(items), _styles(n for _, n, _ in items),
                                "training loss (logged mean)",
                                "training loss against forward passes (median over runs)")


def train_memory_plan(runs: list[dict]):
    """Whole-run peak RSS (loading and evaluation included) per scheme x optimizer, median over every run of
    every task, line from the lowest to the highest."""
    peaks: dict[tuple[str, str], list] = {}
    for g in group_runs(runs):
        s = summarise_group(g)
        c = g["config"]
        peaks.setdefault((c["scheme"]["name"], c["optim"]["name"]), []).extend(v / MiB for v in s["peak_rss"])
    peaks = {k: v for k, v in peaks.items() if v}
    return (lambda: _train_memory_figure(peaks)) if peaks else None


def _train_memory_figure(peaks: dict):
    parts = [(scheme, part) for scheme in sorted({k[0] for k in peaks})
             for part in chunks(sorted(k for k in peaks if k[0] == scheme))]
    longest = max(len(p) for _, p in parts)
    fig, axes = grid(len(parts), 4.2, 1.2 + 0.3 * longest, ncols=4)
    for ax, (scheme, keys) in zip(axes, parts):
        ys = list(range(len(keys)))[::-1]
        med = [statistics.median(peaks[k]) for k in keys]
        ax.barh(ys, med, xerr=[[m - min(peaks[k]) for m, k in zip(med, keys)],
                               [max(peaks[k]) - m for m, k in zip(med, keys)]], capsize=3, color="tab:orange",
                height=0.65)
        ax.set_yticks(ys, [k[1] for k in keys])
        ax.set_xlabel("peak RSS of the whole run, MiB")
        ax.set_title(scheme)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("whole-run peak RSS (loading and evaluation included), median over runs of every task")
    return fig


# ----------------------------------------------------------------------------- one run directory
def run_curves_plan(curve: list[dict], name: str):
    """One run's logged columns against forwards (or step, or epoch): a panel per column, one line each."""
    xkey = next((k for k in ("forwards", "step", "epoch") if curve and all(k in r for r in curve)), None)
    cols = [k for k in curve[0] if k not in ("forwards", "step", "epoch")
            and len(finite(r.get(k) for r in curve)) == len(curve)] if curve else []
    if not cols:
        return None
    return lambda: _run_curves_figure(curve, name, xkey, cols[:6])


def _run_curves_figure(curve, name, xkey, cols):
    fig, axes = grid(len(cols), 3.6, 2.8)
    xs = [r[xkey] for r in curve] if xkey else list(range(len(curve)))
    for ax, col in zip(axes, cols):
        ax.plot(xs, [r[col] for r in curve], marker="o", ms=3)
        if xkey == "forwards":
            set_forwards_axis(ax, xs)
        else:
            ax.set_xlabel(xkey or "logged row")
        ax.set_title(col)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: every logged row (one run)")
    return fig


def plans(loaded: Loaded) -> list[tuple[str, object]]:
    """``[(file name, draw), ...]`` for every plot the loaded records allow; ``draw()`` makes the figure.
    Deciding which plots exist is cheap (no matplotlib), so a report can link them without drawing."""
    r = loaded.records
    if loaded.run_dir:
        draw = run_curves_plan(loaded.curve, Path(loaded.run_dir).name)
        return [("curves.png", draw)] if draw is not None else []
    from .convergence import SUITE, plot_plans

    # the convergence suite's runs have curves of their own; the other training runs, the grid plots
    runs = [x for x in r["train_run"] if not str(x.get("name", "")).startswith(SUITE)]
    out = accuracy_plans(runs)
    for name, plan in (("accuracy_vs_forwards.png", accuracy_vs_forwards_plan),
                       ("loss_vs_forwards.png", loss_vs_forwards_plan), ("train_memory.png", train_memory_plan)):
        draw = plan(runs)
        if draw is not None:
            out.append((name, draw))
    return out + plot_plans(r["train_run"])


def all_plots(loaded: Loaded, out_dir: str | Path) -> list[str]:
    """Every plot the loaded records allow, written into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [save(draw(), out / name) for name, draw in plans(loaded)]
