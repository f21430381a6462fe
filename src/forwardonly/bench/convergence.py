"""Convergence tables from training-run records: how many forward passes each method needs.

Records of ``benchmarks/convergence/run.py`` (``name`` starting ``convergence/``) carry an experiment
path ``SETUP/CELL.../METHOD`` (``E/k16/mezo``, ``E/k16/sweep/mezo-lr1e-4``): the last part is the
method, the rest the cell whose methods are compared. In a cell:

* a **final** run scored the test split along the way (``results.test_curve``, ``test_every``); its
  curve starts at ``test_before`` (forward 0) and ends at ``test_after``;
* a **sweep** or **pilot** run scored the validation split only (``evals``); nothing else looks at it.

Every figure is a median over the seeds of an experiment, with the spread (min-max) beside it. A
method's curve is the median over seeds at each evaluation point (its seeds share the points).
*Forward passes to reach a target* is the first point of that median curve at or above the target.
The headline target of a cell is the reference method's (``mezo``: ZO-SGD) median final test accuracy;
each method's forwards to reach it are divided by the reference's own. Seeds draw their own few-shot
training sets, so a method's final is also read against the floor (``lp``) of the same seed, paired. *Flattened* compares the median
curve's last point with its value at 80 % of the forwards spent: a gain under 1 point means flat.

Example::

    from forwardonly.bench.convergence import render
    print(render(records))          # Markdown: headline, curves' end points, sweeps
"""

from __future__ import annotations

import math
import statistics
from pathlib import PurePosixPath

REFERENCE, CEILING, FLOOR = "mezo", "fo-adam", "lp"
DIVERGED = 10.0
"""A run whose logged training loss rises past this multiple of its first logged row has diverged."""
SUITE = "convergence/"


def is_convergence(rec: dict) -> bool:
    return str(rec.get("name", "")).startswith(SUITE) and rec.get("status", "ok") == "ok"


def method_of(rec: dict) -> str:
    return PurePosixPath(rec.get("experiment", "?")).name


def cell_of(rec: dict) -> str:
    """The experiment path without the method and without a ``sweep``/``pilot`` folder."""
    parts = PurePosixPath(rec.get("experiment", "?")).parts[:-1]
    return "/".join(p for p in parts if p not in ("sweep", "pilot"))


def kind_of_run(rec: dict) -> str:
    """``final`` (test curve), ``probe`` (steps 0: the linear probe or zero-shot), or ``sweep``/``pilot``
    (validation only: a run under ``sweep/`` or ``pilot/``, or any run that scored validation and not test)."""
    parts = PurePosixPath(rec.get("experiment", "?")).parts
    if "sweep" in parts:
        return "sweep"
    cfg = rec["config"]
    if "pilot" in parts or (cfg.get("validate") and not cfg.get("test", True)):
        return "pilot"
    return "probe" if cfg.get("steps") == 0 else "final"


def _acc(metrics: dict | None) -> float | None:
    if not isinstance(metrics, dict):
        return None
    for key in ("accuracy", "f1", "exact_match"):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key])
    return None


def curve(rec: dict, split: str = "test") -> list[tuple[int, float, float]]:
    """``(forwards, train seconds, metric)`` points of one run, from forward 0."""
    res = rec.get("results") or {}
    if split == "test":
        pts = [(0, 0.0, _acc(res.get("test_before")))] if _acc(res.get("test_before")) is not None else []
        pts += [(p["forwards"], p.get("train_time_s", 0.0), _acc(p)) for p in res.get("test_curve") or []]
    else:
        pts = [(e.get("forwards", 0), e.get("train_time_s", 0.0), _acc(e)) for e in res.get("evals") or []]
    return [p for p in pts if p[2] is not None]


def median_curve(recs: list[dict], split: str = "test") -> list[tuple[float, float, float, float, float]]:
    """``(forwards, train s, median, min, max)`` over the runs at each point they all have."""
    curves = [curve(r, split) for r in recs]
    n = min((len(c) for c in curves), default=0)
    out = []
    for i in range(n):
        vals = [c[i][2] for c in curves]
        out.append((statistics.median(c[i][0] for c in curves), statistics.median(c[i][1] for c in curves),
                    statistics.median(vals), min(vals), max(vals)))
    return out


def forwards_to_reach(points, target: float) -> float | None:
    """The first forwards of a (median) curve at or above ``target``; None if it never gets there."""
    for p in points:
        if p[2] >= target - 1e-12:
            return p[0]
    return None


def flat_gain(points, frac: float = 0.2) -> float | None:
    """Gain of the last point over the curve's value at ``(1 - frac)`` of its last forwards (None if too short)."""
    if len(points) < 3:
        return None
    cut = (1 - frac) * points[-1][0]
    before = [p for p in points if p[0] <= cut]
    return points[-1][2] - before[-1][2] if before else None


def _spread(vals: list[float], scale: float = 100.0, digits: int = 1, sign: str = "") -> str:
    """Median [min, max] of ``vals`` times ``scale`` (the median alone for one value); ``sign="+"`` signs them."""
    vals = [v * scale for v in vals if v is not None]
    if not vals:
        return "-"
    f = f"{sign}.{digits}f"
    med = statistics.median(vals)
    return f"{med:{f}}" if len(vals) == 1 else f"{med:{f}} [{min(vals):{f}}, {max(vals):{f}}]"


def _method_order(methods) -> list[str]:
    """The floor and the reference first, the ceiling last, the rest by name."""
    return sorted(methods, key=lambda m: (m not in (FLOOR, REFERENCE), m == CEILING, m))


def _table(head: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def by_cell(recs: list[dict], kinds: tuple[str, ...]) -> dict[str, dict[str, list[dict]]]:
    out: dict[str, dict[str, list[dict]]] = {}
    for r in recs:
        if is_convergence(r) and kind_of_run(r) in kinds:
            out.setdefault(cell_of(r), {}).setdefault(method_of(r), []).append(r)
    return dict(sorted(out.items()))


def train_time(rec: dict) -> float:
    """The run's training seconds without the seconds it was stopped (``paused_s``). Newer records say
    ``train_time_excludes_pauses`` (the runner's clock left them out); in older ones a pause fell inside
    a step and is subtracted here."""
    t = rec["results"]["train_time_s"]
    return t if rec.get("train_time_excludes_pauses") else t - (rec.get("paused_s") or 0.0)


def _lr(rec: dict) -> str:
    if not rec["config"].get("steps"):
        return "-"  # no training (the linear-probe floor): no learning rate took part
    lr = rec["config"]["optim"].get("lr")
    return f"{lr:g}" if isinstance(lr, (int, float)) else str(lr)


def headline_rows(methods: dict[str, list[dict]]) -> list[list]:
    """One row per method of a cell (see the module docstring for each figure)."""
    ref = methods.get(REFERENCE, [])
    target = statistics.median(_acc(r["results"].get("test_after")) for r in ref) if ref else None
    ref_fwd = forwards_to_reach(median_curve(ref), target) if ref else None
    ceiling = [_acc(r["results"].get("test_after")) for r in methods.get(CEILING, [])]
    floor = {r.get("seed"): _acc(r["results"].get("test_after")) for r in methods.get(FLOOR, [])}
    rows = []
    order = _method_order(methods)
    for m in order:
        recs = methods[m]
        finals = [_acc(r["results"].get("test_after")) for r in recs]
        med = median_curve(recs)
        reach = forwards_to_reach(med, target) if target is not None and recs[0]["config"].get("steps") else None
        ratio = f"{reach / ref_fwd:.2f}" if reach is not None and ref_fwd else "-"
        if target is not None and reach is None and recs[0]["config"].get("steps"):
            ratio = "not reached"
        fwd = [r["results"].get("forwards") for r in recs]
        per_fwd = [train_time(r) / r["results"]["forwards"] for r in recs if r["results"].get("forwards")]
        gain = flat_gain(med)
        vs = (f"{100 * (statistics.median(finals) - statistics.median(ceiling)):+.1f}"
              if ceiling and m != CEILING and finals else "-")
        rss = [r["results"].get("peak_rss_bytes") or 0 for r in recs]
        paired = [_acc(r["results"].get("test_after")) - floor[r.get("seed")] for r in recs
                  if m != FLOOR and floor.get(r.get("seed")) is not None]
        rows.append([m, _lr(recs[0]), len(recs), _spread(finals), f"{statistics.median(f for f in fwd if f):.0f}"
                     if any(fwd) else "0", f"{reach:.0f}" if reach is not None else "-", ratio, vs,
                     f"{1000 * statistics.median(per_fwd):.0f}" if per_fwd else "-",
                     f"{100 * gain:+.1f}" if gain is not None else "-", f"{max(rss) / 2**20:.0f}",
                     _spread(paired, sign="+")])
    return rows


HEADLINE_HEAD = ["method", "lr", "seeds", "final test % median [min, max]", "forwards spent",
                 "forwards to MeZO's final", "ratio to MeZO", "vs FO-Adam (points)", "ms / forward (train)",
                 "last 20 % gain (points)", "peak RSS MiB", "over the same seed's probe (points)"]


def diverged_run(rec: dict) -> bool:
    """A logged training loss that is not finite, or more than ``DIVERGED`` times the first logged one."""
    losses = [h.get("loss", 0.0) for h in rec["results"].get("history") or []]
    if any(not math.isfinite(x) for x in losses):
        return True
    return bool(losses) and max(losses) > DIVERGED * losses[0]


def sweep_rows(methods: dict[str, list[dict]]) -> list[list]:
    rows = []
    for m in sorted(methods):
        recs = methods[m]
        finals = [curve(r, "validation")[-1][2] for r in recs if curve(r, "validation")]
        start = [curve(r, "validation")[0][2] for r in recs if curve(r, "validation")]
        diverged = sum(1 for r in recs if diverged_run(r))
        losses = [[h["loss"] for h in r["results"].get("history") or [] if math.isfinite(h.get("loss", math.nan))]
                  for r in recs]
        first, last = [x[0] for x in losses if x], [x[-1] for x in losses if x]
        per_fwd = [train_time(r) / r["results"]["forwards"] for r in recs if r["results"].get("forwards")]
        rows.append([m, recs[0]["config"]["optim"]["name"], _lr(recs[0]), recs[0]["results"].get("forwards"),
                     len(recs), _spread(start), _spread(finals),
                     f"{_spread(first, 1, 3)} -> {_spread(last, 1, 3)}" if first else "-",
                     f"{1000 * statistics.median(per_fwd):.0f}" if per_fwd else "-", diverged or ""])
    return rows


SWEEP_HEAD = ["run", "optimizer", "lr", "forwards", "seeds", "validation % at start", "validation % at end",
              "training loss, first -> last logged row", "ms / forward (train)", "diverged"]


def seed_rows(methods: dict[str, list[dict]]) -> tuple[list[str], list[list]]:
    """Final test accuracy % of each method (columns, in the headline's order) for each seed (rows)."""
    order = _method_order(methods)
    acc = {(m, r.get("seed")): _acc(r["results"].get("test_after")) for m in order for r in methods[m]}
    seeds = sorted({s for _, s in acc}, key=lambda s: (s is None, s))
    rows = [[s, *(f"{100 * acc[m, s]:.2f}" if acc.get((m, s)) is not None else "-" for m in order)] for s in seeds]
    return ["seed", *order], rows


def render(recs: list[dict]) -> str:
    """The convergence section: per cell, the headline table, then its sweeps and pilots."""
    parts = []
    finals = by_cell(recs, ("final", "probe"))
    tuning = {k: by_cell(recs, (k,)) for k in ("sweep", "pilot")}
    for cell in sorted(set(finals) | set(tuning["sweep"]) | set(tuning["pilot"])):
        out = [f"### {cell}"]
        if cell in finals:
            out.append("Test accuracy (median over seeds [min, max]); forwards to reach MeZO's median final test "
                       "accuracy, read off each method's median curve.\n\n" + _table(HEADLINE_HEAD,
                                                                                     headline_rows(finals[cell])))
            head, rows = seed_rows(finals[cell])
            out.append("Final test accuracy % per seed (each seed draws its own training sentences):\n\n"
                       + _table(head, rows))
        for kind in ("sweep", "pilot"):
            if cell in tuning[kind]:
                out.append(f"{kind.capitalize()} (validation only):\n\n" + _table(SWEEP_HEAD,
                                                                                  sweep_rows(tuning[kind][cell])))
        parts.append("\n\n".join(out))
    return "## Convergence\n\n" + "\n\n".join(parts) if parts else ""


def plot_plans(recs: list[dict]) -> list[tuple[str, object]]:
    """Per cell, ``(file name, draw)`` of one figure: test accuracy against forward passes (left) and training
    seconds (right), the median over seeds as a line and the min-max spread as a band; the linear probe (or
    zero-shot) as a dashed line; then per cell with a sweep, its validation curves (:func:`_sweep_figure`).
    ``draw()`` makes the figure (:func:`forwardonly.bench.plots.plans`)."""
    finals = [("curves_" + cell.replace("/", "_") + ".png", (lambda c=cell, m=methods: _curves_figure(c, m)))
              for cell, methods in by_cell(recs, ("final", "probe")).items()]
    sweeps = [("sweep_" + cell.replace("/", "_") + ".png", (lambda c=cell, r=runs: _sweep_figure(c, r)))
              for cell, runs in by_cell(recs, ("sweep",)).items()]
    return finals + sweeps


def _sweep_figure(cell: str, runs: dict[str, list[dict]]):
    """One panel per optimizer of a cell's sweep: validation accuracy against forward passes, one line per
    learning rate (median over seeds), a diverged run dashed and marked as such."""
    from .figure import grid, plt_module

    by_optim: dict[str, list[tuple[str, list[dict]]]] = {}
    for name, recs in runs.items():
        by_optim.setdefault(recs[0]["config"]["optim"]["name"], []).append((name, recs))
    fig, axes = grid(len(by_optim), 4.2, 3.4, ncols=3)
    colours = plt_module().rcParams["axes.prop_cycle"].by_key()["color"]

    def order(item):  # numeric rates rising, then the lr: auto runs by name
        lr = item[1][0]["config"]["optim"]["lr"]
        return (1, 0.0, item[0]) if lr == "auto" else (0, float(lr), item[0])

    for ax, (optim, items) in zip(axes, sorted(by_optim.items())):
        items.sort(key=order)
        for j, (name, recs) in enumerate(items):
            med = median_curve(recs, "validation")
            if not med:
                continue
            bad = any(diverged_run(r) for r in recs)
            ax.plot([p[0] for p in med], [100 * p[2] for p in med], color=colours[j % len(colours)],
                    ls="--" if bad else "-", marker=".", lw=1.4,
                    label=(f"lr {_lr(recs[0])}" if recs[0]["config"]["optim"]["lr"] != "auto"
                           else f"lr auto ({name.rsplit('/', 1)[-1]})") + (" (diverged)" if bad else ""))
        ax.set_title(optim)
        ax.set_xlabel("forward passes (training)")
        ax.set_ylabel("validation accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, frameon=False)
    fig.suptitle(f"{cell}: learning-rate sweep (validation only, median over seeds)")
    return fig


def _curves_figure(cell: str, methods: dict[str, list[dict]]):
    from .figure import grid, plt_module

    fig, axes = grid(2, 4.6, 3.6, ncols=2, legend_rows=len(methods))
    colours = plt_module().rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(sorted(methods)):
        if methods[m][0]["config"].get("steps") == 0:
            level = statistics.median(_acc(r["results"].get("test_after")) for r in methods[m])
            for ax in axes:
                ax.axhline(100 * level, ls="--", color="k", lw=1, label=f"{m} (no training)")
            continue
        med = median_curve(methods[m])
        for ax, x in zip(axes, (0, 1)):
            xs = [p[x] for p in med]
            ax.plot(xs, [100 * p[2] for p in med], color=colours[i % len(colours)], label=m, lw=1.6)
            ax.fill_between(xs, [100 * p[3] for p in med], [100 * p[4] for p in med],
                            color=colours[i % len(colours)], alpha=0.15, lw=0)
    for ax, label in zip(axes, ("forward passes (training)", "training time, s (shared 2-core machine)")):
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy % (median, min-max band)")
        ax.grid(alpha=0.3)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"{cell}: test accuracy during training")
    return fig
