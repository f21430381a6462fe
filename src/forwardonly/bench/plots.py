"""PNG plots of loaded result records (the ``plot`` extra: matplotlib, imported lazily).

Each function takes the records of :func:`forwardonly.bench.report.load_results`,
writes one PNG into ``out_dir`` and returns its path, or ``None`` when the
records hold nothing to draw. Nothing here computes a number the tables do not show.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..errors import UserError
from .report import Loaded, MiB, group_runs, memory_rows, summarise_group, trained_groups


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'forwardonly[plot]' (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    fig.get_figure().clf()
    return str(path)


def accuracy_bars(runs: list[dict], out_dir: Path) -> str | None:
    """Per task: test metric (mean, std over seeds) per scheme x optimizer, zero-shot as a black tick."""
    groups = [(g, s) for g, s in trained_groups(runs) if s["after"]]
    if not groups:
        return None
    plt = _plt()
    tasks = sorted({g["config"]["task"]["name"] for g, _ in groups})
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(6, 0.55 * len(groups) + 2), 3.6 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        mine = sorted([(g, s) for g, s in groups if g["config"]["task"]["name"] == task],
                      key=lambda gs: (gs[0]["config"]["scheme"]["name"], gs[0]["config"]["optim"]["name"]))
        labels = [f"{g['config']['optim']['name']}\n{g['config']['scheme']['name']}"
                  f"{'' if not g['config'].get('budget_forwards') else ' ' + str(g['config']['budget_forwards'])}"
                  for g, _ in mine]
        means = [100 * statistics.fmean(s["after"]) for _, s in mine]
        stds = [100 * statistics.stdev(s["after"]) if len(s["after"]) > 1 else 0.0 for _, s in mine]
        x = range(len(mine))
        ax.bar(x, means, yerr=stds, capsize=3, color="tab:blue", label="after training")
        zs = [(i, 100 * statistics.fmean(s["before"])) for i, (_, s) in enumerate(mine) if s["before"]]
        if zs:
            ax.scatter([i for i, _ in zs], [v for _, v in zs], marker="_", s=400, color="k", zorder=3,
                       label="zero-shot")
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set_ylabel(f"{mine[0][1]['metric']} % (test)")
        ax.set_title(task)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out_dir / "accuracy.png")


def accuracy_vs_forwards(runs: list[dict], out_dir: Path) -> str | None:
    """Per task: test metric against forward passes spent, one line per optimizer x scheme (budgets joined)."""
    groups = [(g, s) for g, s in trained_groups(runs) if s["after"] and s["forwards"]]
    if not groups:
        return None
    plt = _plt()
    tasks = sorted({g["config"]["task"]["name"] for g, _ in groups})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        lines: dict[str, list] = {}
        for g, s in groups:
            c = g["config"]
            if c["task"]["name"] == task:
                lines.setdefault(f"{c['optim']['name']} ({c['scheme']['name']})", []).append(
                    (statistics.fmean(s["forwards"]), 100 * statistics.fmean(s["after"]),
                     100 * (statistics.stdev(s["after"]) if len(s["after"]) > 1 else 0.0)))
        for label, pts in sorted(lines.items()):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                        capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("forward passes (training)")
        ax.set_ylabel("test % (mean ± std over seeds)")
        ax.set_title(task)
        ax.legend(fontsize=7)
    return _save(fig, out_dir / "accuracy_vs_forwards.png")


def loss_vs_forwards(runs: list[dict], out_dir: Path) -> str | None:
    """Per task: training loss (logged means, averaged over seeds) against forward passes spent."""
    curves = []
    for g, _ in trained_groups(runs):
        hists = [r["results"].get("history") or [] for r in g["ok"]]
        n = min((len(h) for h in hists), default=0)
        if n:
            fwd = [statistics.fmean(h[i]["forwards"] for h in hists) for i in range(n)]
            loss = [statistics.fmean(h[i]["loss"] for h in hists) for i in range(n)]
            curves.append((g["config"], fwd, loss, len(hists)))
    if not curves:
        return None
    plt = _plt()
    tasks = sorted({c["task"]["name"] for c, *_ in curves})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for c, fwd, loss, n in curves:
            if c["task"]["name"] == task:
                ax.plot(fwd, loss, marker=".", label=f"{c['optim']['name']} ({c['scheme']['name']}, {n} seeds)")
        ax.set_xlabel("forward passes (training)")
        ax.set_ylabel("training loss (logged mean)")
        ax.set_title(task)
        ax.legend(fontsize=7)
    return _save(fig, out_dir / "loss_vs_forwards.png")


def train_memory(runs: list[dict], out_dir: Path) -> str | None:
    """Peak RSS of whole training runs per optimizer x scheme (max over tasks and seeds)."""
    peak: dict[tuple[str, str], float] = {}
    for g in group_runs(runs):
        s = summarise_group(g)
        if s["peak_rss"]:
            key = (g["config"]["optim"]["name"], g["config"]["scheme"]["name"])
            peak[key] = max(peak.get(key, 0.0), max(s["peak_rss"]) / MiB)
    if not peak:
        return None
    plt = _plt()
    keys = sorted(peak, key=lambda k: (k[1], k[0]))
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(keys) + 2), 3.6))
    ax.bar(range(len(keys)), [peak[k] for k in keys], color="tab:orange")
    ax.set_xticks(range(len(keys)), [f"{o}\n{s}" for o, s in keys], fontsize=7)
    ax.set_ylabel("peak RSS of the run, MiB")
    ax.set_title("whole-run peak memory (includes evaluation)")
    return _save(fig, out_dir / "train_memory.png")


def memory_sweep(rec: dict, out_dir: Path) -> str | None:
    """Peak RSS against sequence length (at the most common batch) and against batch size."""
    rows = memory_rows(rec)
    if not rows:
        return None
    plt = _plt()
    batches = [r["batch"] for r in rows]
    b0 = max(set(batches), key=batches.count)
    seqs = [r["seq"] for r in rows]
    s0 = max(set(seqs), key=seqs.count)
    base = (rec["results"].get("baseline") or {}).get("rss")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (fixed, vary, value) in zip(axes, (("batch", "seq", b0), ("seq", "batch", s0))):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r[vary], r["peak_rss"] / MiB) for r in rows if r["method"] == method and r[fixed] == value)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        if base:
            ax.axhline(base / MiB, color="k", ls=":", label="baseline (weights + runtime)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length (tokens)" if vary == "seq" else "batch size")
        ax.set_ylabel("peak RSS, MiB (one step)")
        ax.set_title(f"{fixed} = {value}")
    axes[0].legend(fontsize=7)
    return _save(fig, out_dir / f"{Path(rec['_path']).stem}.png")


def local_accuracy(recs: list[dict], out_dir: Path) -> str | None:
    if not recs:
        return None
    plt = _plt()
    recs = sorted(recs, key=lambda r: r.get("name", ""))
    names = [r.get("name", Path(r["_path"]).stem).split("/")[-1] for r in recs]
    accs = [r["results"]["aggregate"]["test_acc"] for r in recs]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(recs) + 2), 3.6))
    ax.bar(range(len(recs)), [100 * a["mean"] for a in accs], yerr=[100 * a.get("std", 0.0) for a in accs],
           capsize=3, color="tab:green")
    ax.set_xticks(range(len(recs)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy % (mean ± std over seeds)")
    ax.set_title("local learning")
    return _save(fig, out_dir / "local_accuracy.png")


def all_plots(loaded: Loaded, out_dir: str | Path) -> list[str]:
    """Every plot the loaded records allow, written into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = loaded.records
    from .convergence import SUITE, plot as convergence_plot

    # the convergence suite's runs have curves of their own; the other training runs, the grid plots
    runs = [x for x in r["train_run"] if not str(x.get("name", "")).startswith(SUITE)]
    made = [accuracy_bars(runs, out), accuracy_vs_forwards(runs, out), loss_vs_forwards(runs, out),
            train_memory(runs, out)]
    made += convergence_plot(r["train_run"], out)
    made += [memory_sweep(rec, out) for rec in r["memory_sweep"]]
    made.append(local_accuracy(r["local_learning"], out))
    import matplotlib.pyplot as plt

    plt.close("all")
    return [p for p in made if p]
