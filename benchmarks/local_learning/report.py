"""Build README.md's results section and the plots from the committed result JSON.

Usage (from the repository root)::

    python benchmarks/local_learning/report.py

Reads ``results/*.json`` only; never trains or measures anything. Writes
``results/*.png`` and README.md's generated blocks ``results``, ``memory`` and ``round2``.
Every record of an experiment counts: ``run.py`` writes a new file per invocation
(``results/<experiment>.<UTC time>.json``), and the runs of every record of an
experiment with the same config are pooled (a seed run twice counts twice), except that
records which pin their code (a commit, and the diff of a dirty tree) supersede the legacy
ones that stored no diff: where an experiment has both, only the pinned ones count. The
second round (conv nets, tpSGD, CaFo as published, NoProp) is reported as the
median over the pooled seeds with their range, each method beside its backprop twin.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORDER = ["bp", "mf", "ff", "cafo", "dfa", "drtp", "fg-local", "fg-weight", "bp-1000", "mf-1000",
         "bp-1000-e25", "mf-1000-e25", "bp-1000-d80", "mf-1000-d80", "bp-1500", "mf-1500", "bp-e30", "mf-e30", "ff-hard",
         "ff-hard-1000", "ff-hard-1000-d85", "ff-hard-k3", "ff-hard-comb", "ff-hard-ls10",
         "ff-hard-ls10-lr2", "ff-hard-ls10-lr2-ema", "bp-e30-lr2-ema", "mf-e30-lr2-ema"]
LABELS = {"bp": "Backprop", "mf": "Mono-Forward", "ff": "Forward-Forward", "cafo": "CaFo (rand, closed form)",
          "dfa": "DFA", "drtp": "DRTP", "fg-local": "Forward grad. (local-guided)",
          "fg-weight": "Forward grad. (weight pert.)",
          "bp-1000": "Backprop, 2x1000 + lr decay", "mf-1000": "Mono-Forward, 2x1000 + lr decay",
          "bp-1000-e25": "Backprop, 2x1000, 25 ep.", "mf-1000-e25": "Mono-Forward, 2x1000, 25 ep.",
          "bp-1000-d80": "Backprop, 2x1000, decay 0.8", "mf-1000-d80": "Mono-Forward, 2x1000, decay 0.8",
          "bp-1500": "Backprop, 2x1500 + lr decay", "mf-1500": "Mono-Forward, 2x1500 + lr decay",
          "bp-e30": "Backprop, 30 ep., decay 0.9", "mf-e30": "Mono-Forward, 30 ep., decay 0.9",
          "ff-hard": "Forward-Forward, hard neg. + RMS norm, 30 ep., decay 0.9",
          "ff-hard-1000": "Forward-Forward, 2x1000, hard neg. + RMS norm, 30 ep., decay 0.9",
          "ff-hard-1000-d85": "Forward-Forward, 2x1000, hard neg. + RMS norm, 30 ep., decay 0.85",
          "ff-hard-k3": "Forward-Forward, 3 hard neg. + RMS norm, 30 ep., decay 0.9",
          "ff-hard-comb": "Forward-Forward, hard neg. + RMS norm, combined prediction, 30 ep., decay 0.9",
          "ff-hard-ls10": "Forward-Forward, hard neg. + RMS norm, label scale 10, 30 ep., decay 0.9",
          "ff-hard-ls10-lr2": "Forward-Forward, hard neg. + RMS norm, label scale 10, lr 2e-3, 30 ep., decay 0.9",
          "ff-hard-ls10-lr2-ema": "Forward-Forward, hard neg. + RMS norm, label scale 10, lr 2e-3, weight average, "
                                  "combined prediction, 30 ep., decay 0.9",
          "bp-e30-lr2-ema": "Backprop, lr 2e-3, weight average, 30 ep., decay 0.9",
          "mf-e30-lr2-ema": "Mono-Forward, lr 2e-3, weight average, 30 ep., decay 0.9"}
METHODS = {"bp": "backprop", "mf": "Mono-Forward", "ff": "Forward-Forward", "cafo": "CaFo", "dfa": "DFA",
           "drtp": "DRTP", "fg": "forward gradient"}
# the validation curves plot: the first round of every method, then the last round of the three with targets
CURVES = ["bp", "mf", "ff", "cafo", "dfa", "drtp", "fg-local", "fg-weight",
          "bp-e30-lr2-ema", "mf-e30-lr2-ema", "ff-hard-ls10-lr2-ema"]
# Fashion-MNIST MLP anchors from the issue, by method: (lower, upper) bound in %; the target is >= lower
ANCHORS = {"mf": (89.62, 89.84), "ff": (89.50, 89.73), "bp": (88.22, 89.66)}
# memory.py measures each method once, with its default recipe; runs it does not stand for show "-"
MEMORY_ARCHS = ("mlp-2x1000", "mlp-6x2000")  # the two MLPs memory.py measures every method on
NOT_MEASURED = {"ff-hard", "ff-hard-1000", "ff-hard-1000-d85", "ff-hard-k3", "ff-hard-comb", "ff-hard-ls10",
                "ff-hard-ls10-lr2", "ff-hard-ls10-lr2-ema"}  # hard negatives add a no-grad pass before the local steps


def _pooled(recs: list[dict]) -> dict:
    """One record standing for every record of an experiment: their runs pooled, the aggregate recomputed."""
    if len(recs) == 1:
        return recs[0]
    from forwardonly.config import load_config, to_dict
    from forwardonly.local.config import LocalConfig

    configs = {str(to_dict(load_config(LocalConfig, base=r["config"]))) for r in recs}
    if len(configs) > 1:
        raise SystemExit(f"{recs[0]['name']}: records with different configs: {[r['_path'] for r in recs]}")
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_learning_run", HERE / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    runs = [run for r in recs for run in r["results"]["runs"]]
    return {**recs[-1], "results": {"aggregate": run.aggregate(runs), "runs": runs}, "_paths": [r["_path"] for r in recs]}


def _median_memory(recs: list[dict]) -> dict | None:
    """The memory records as one: every figure the median over the records that have it."""
    import statistics

    if not recs:
        return None
    out: dict = {"results": {}}
    for arch in {a for r in recs for a in r["results"]}:
        for name in {n for r in recs for n in r["results"].get(arch, {})}:
            vals = [r["results"][arch][name] for r in recs if name in r["results"].get(arch, {})]
            out["results"].setdefault(arch, {})[name] = {
                k: statistics.median(v[k] for v in vals) for k in vals[0] if isinstance(vals[0][k], (int, float))}
    return out


def load(rs=None) -> tuple[dict, dict | None]:
    from forwardonly.bench.record import RecordSet

    return _load_round(rs or RecordSet(HERE), ORDER, "memory")


def _load_round(rs, names, memory: str) -> tuple[dict, dict | None]:
    """The records of experiments ``names`` (every record of one pooled) and the memory records
    ``results/<memory>[.*].json`` (median)."""
    def records(stem: str) -> list[dict]:  # a clean re-run supersedes the legacy records that stored no diff
        return rs.glob(f"results/{stem}.json", f"results/{stem}.*.json", prefer_pinned=True)

    runs = {name: _pooled(recs) for name in names if (recs := records(name))}
    return runs, _median_memory(records(memory))


def _memory_cells(mem: dict | None, name: str, saved_digits: int) -> tuple[str, str]:
    """``name``'s peak RSS above the start and autograd-saved peak in MiB, each as "2x1000 / 6x2000" (the two
    MLPs of the memory record); "-" for both unless both MLPs have it."""
    parts = [mem["results"].get(a, {}).get(name) for a in MEMORY_ARCHS] if mem else [None]
    if not all(parts):
        return "-", "-"
    return (" / ".join(f"{p['peak_rss_above_start'] / 2**20:.0f}" for p in parts),
            " / ".join(f"{p['autograd_saved_peak_bytes'] / 2**20:.{saved_digits}f}" for p in parts))


def _pm(agg: dict, key: str, scale: float = 100.0, fmt: str = "{:.2f}") -> str:
    if key not in agg:
        return "-"
    a = agg[key]
    return f"{fmt.format(a['mean'] * scale)} ± {fmt.format(a['std'] * scale)}"


def table(runs: dict, mem: dict | None) -> str:
    from forwardonly.bench.report import table as markdown_table

    head = ["method (784-500-500 unless marked)", "test acc. % (mean ± std, 3 seeds)", "anchor %", "target",
            "epochs run", "s / epoch", "s to 85 % val.", "MFLOP / train ex. (proxy)",
            "peak mem. above start, MiB, 2x1000 / 6x2000 @1024", "autograd-saved peak MiB, 2x1000 / 6x2000"]
    rows = []
    for name, rec in runs.items():
        agg = rec["results"]["aggregate"]
        algo = rec["config"]["algo"]
        acc = _pm(agg, "test_acc")
        n_seeds = agg["test_acc"]["n"]
        if algo == "ff":
            predict = rec["config"].get("ff", {}).get("predict", "goodness")
            acc += f" ({predict})"
            for other in ("goodness", "probe", "combined"):
                if other != predict and f"test_acc_{other}" in agg:
                    acc += f"; {other} {_pm(agg, f'test_acc_{other}')}"
        if n_seeds < 3:  # a partial round: no spread to speak of
            acc += f", **{n_seeds} seed{'s' if n_seeds > 1 else ''} only**"
        lo_hi = ANCHORS.get(algo)
        anchor = f"{lo_hi[0]:.2f}-{lo_hi[1]:.2f}" if lo_hi else "-"
        target = "-" if not lo_hi else ("met" if agg["test_acc"]["mean"] * 100 >= lo_hi[0] else "missed")
        if lo_hi and n_seeds < 3:
            target = "not judged (needs 3 seeds)"
        ttt = agg.get("time_to_target")
        ttt_s = "not reached" if not ttt else f"{ttt['mean']:.0f} ({ttt['n']}/{n_seeds} seeds)"
        flops = rec["results"]["runs"][0]["flops_per_example"]["train"] / 1e6
        m, s = "-", "-"
        if name not in NOT_MEASURED:  # memory is measured per method, on its own two MLPs
            m, s = _memory_cells(mem, name if algo == "fg" else algo, 0)
        rows.append([LABELS[name], acc, anchor, target, _pm(agg, "epochs_run", 1, "{:.1f}"),
                     _pm(agg, "seconds_per_epoch", 1, "{:.1f}"), ttt_s, f"{flops:.1f}", m, s])
    return markdown_table(head, rows)


def plots(runs: dict, mem: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    names = list(runs)
    # one row per experiment, in table order, top to bottom; colour by method
    fig, ax = plt.subplots(figsize=(7.5, 2.0 + 0.24 * len(names)))
    means = [runs[n]["results"]["aggregate"]["test_acc"]["mean"] * 100 for n in names]
    stds = [runs[n]["results"]["aggregate"]["test_acc"]["std"] * 100 for n in names]
    algos = [runs[n]["config"]["algo"] for n in names]
    palette = {a: f"C{i}" for i, a in enumerate(dict.fromkeys(algos))}
    lo = 80.0  # bars below are clipped; every bar carries its value
    ys = list(range(len(names)))[::-1]
    ax.barh(ys, [max(m, lo) - lo for m in means], left=lo, xerr=stds, capsize=3,
            color=[palette[a] for a in algos], height=0.7)
    labelled = False
    for y, n, m in zip(ys, names, means):
        if (lo_hi := ANCHORS.get(runs[n]["config"]["algo"])):
            ax.vlines(lo_hi[0], y - 0.4, y + 0.4, colors="black", lw=2,
                      label=None if labelled else "anchor lower bound (target)")
            labelled = True
        seeds = runs[n]["results"]["aggregate"]["test_acc"]["n"]
        ax.text(91.2, y, f"{m:.2f}" + ("" if seeds >= 3 else f" ({seeds} seed)"), va="center", fontsize=7)
    ax.set_yticks(ys, names, fontsize=7)  # experiment names: the files in experiments/
    ax.set_xlim(lo, 92.6)
    ax.set_xlabel("test accuracy % (mean ± std over seeds)")
    ax.set_title("Fashion-MNIST, MLP 784-500-500 unless marked")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=METHODS.get(a, a)) for a, c in palette.items()]
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.45, -0.06), fontsize=7, ncol=4, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "accuracy.png", dpi=110)
    out.append("results/accuracy.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9.5, 4.5), layout="constrained")
    for i, n in enumerate([n for n in CURVES if n in runs]):
        hist = runs[n]["results"]["runs"][0]["history"]
        ax.plot([h["train_seconds"] for h in hist], [h["val_acc"] * 100 for h in hist], marker="o", ms=3,
                color=f"C{i % 10}", ls="-" if i < 10 else "--", label=n)
    ax.set_xlabel("training seconds (1 thread, seed 0)")
    ax.set_ylabel("validation accuracy %")
    ax.set_ylim(70, 92)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8, frameon=False)
    ax.set_title("First round of every method and the last round of the three with targets")
    fig.savefig(RESULTS / "curves.png", dpi=110)
    out.append("results/curves.png")
    plt.close(fig)

    if mem:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.9), layout="constrained")
        for ax, arch in zip(axes, MEMORY_ARCHS):
            res = mem["results"].get(arch, {})
            ns = [n for n in ORDER if n in res]
            ax.bar(range(len(ns)), [res[n]["peak_rss_above_start"] / 2**20 for n in ns], label="peak RSS above start")
            ax.scatter(range(len(ns)), [res[n]["autograd_saved_peak_bytes"] / 2**20 for n in ns], color="k",
                       zorder=3, label="autograd-saved peak")
            ax.set_xticks(range(len(ns)), ns, rotation=30, fontsize=8)
            ax.set_title(f"{arch}, batch 1024")
            ax.set_ylabel("MiB")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8,
                   frameon=False)
        fig.savefig(RESULTS / "memory.png", dpi=110)
        out.append("results/memory.png")
        plt.close(fig)
    return out


# second round: experiment -> its backprop twin (same data, protocol and architecture where the method has one)
ROUND2 = {"cnv-bp": None, "cnv-mf": "cnv-bp", "cnv-ff": "cnv-bp", "cnv-cafo-dfa": "cnv-bp", "cnv-cafo-rand": "cnv-bp",
          "cnv-ff-ls1": "cnv-bp", "cnv-noprop": "cnv-bp", "cnv-noprop-ct": "cnv-bp", "cnv-noprop-fm": "cnv-bp",
          "cnv-noprop-ct-tuned": "cnv-bp", "cnv-noprop-fm-tuned": "cnv-bp",
          "cnv-bp-tanh": None, "cnv-tpsgd": "cnv-bp-tanh"}
ROUND2_LABELS = {"cnv-bp": "Backprop (conv)", "cnv-mf": "Mono-Forward (conv)",
                 "cnv-ff": "Forward-Forward, label scale 10 (conv)", "cnv-ff-ls1": "Forward-Forward, label scale 1 (conv)",
                 "cnv-cafo-dfa": "CaFo, DFA blocks, CE predictors (conv)",
                 "cnv-cafo-rand": "CaFo, random blocks, CE predictors (conv)", "cnv-noprop": "NoProp-DT, 10 blocks (conv)",
                 "cnv-noprop-ct": "NoProp-CT, 10 steps (conv)", "cnv-noprop-fm": "NoProp-FM, 10 steps (conv)",
                 "cnv-noprop-ct-tuned": "NoProp-CT, uniform weighting, lr 5e-3 (conv)",
                 "cnv-noprop-fm-tuned": "NoProp-FM, 2 steps, lr 3e-3 (conv)",
                 "cnv-bp-tanh": "Backprop, tanh (conv)", "cnv-tpsgd": "tpSGD, mse, tanh (conv)"}


def load_round2(rs) -> tuple[dict, dict | None]:
    """The second round's records (every record of an experiment pooled) and its memory records (median)."""
    return _load_round(rs, ROUND2, "memory-round2")


def _median_range(vals: list[float]) -> str:
    import statistics

    v = [x * 100 for x in vals]
    return f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"


def round2_table(runs: dict, mem: dict | None) -> str:
    import statistics

    from forwardonly.bench.report import table as markdown_table

    head = ["method", "test acc. %, median [range]", "seeds", "twin", "gap to twin, points (median)", "epochs run",
            "s / epoch (median)", "MFLOP / train ex.", "autograd-saved peak MiB @1024, shallow / deep",
            "peak RSS above start MiB, shallow / deep"]
    rows = []
    for name, twin in ROUND2.items():
        if name not in runs:
            rows.append([ROUND2_LABELS[name], "not run", 0, twin or "-", *["-"] * 6])
            continue
        res = runs[name]["results"]
        accs = [r["test_acc"] for r in res["runs"]]
        gap = "-"
        if twin and twin in runs:
            gap = f"{(statistics.median(accs) - statistics.median([r['test_acc'] for r in runs[twin]['results']['runs']])) * 100:+.2f}"
        elif twin:
            gap = "twin not run"
        epochs = statistics.median([r["epochs_run"] for r in res["runs"]])
        sec = statistics.median([r["seconds_per_epoch"] for r in res["runs"]])
        flops = res["runs"][0]["flops_per_example"]["train"] / 1e6
        rss, saved = _memory_cells(mem, name, 1)
        rows.append([ROUND2_LABELS[name], _median_range(accs), len(accs), twin or "-", gap, f"{epochs:g}",
                     f"{sec:.1f}", f"{flops:.2f}", saved, rss])
    return markdown_table(head, rows)


def round2_plots(runs: dict) -> list[str]:
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ROUND2 if n in runs]
    if not names:
        return []
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 1.4 + 0.42 * len(names)), gridspec_kw={"width_ratios": [1, 1.1]},
                                 layout="constrained")
    ys = list(range(len(names)))[::-1]
    for y, n in zip(ys, names):
        accs = [r["test_acc"] * 100 for r in runs[n]["results"]["runs"]]
        colour = "C0" if runs[n]["config"]["algo"] == "bp" else "C1"
        ax.scatter(accs, [y] * len(accs), color=colour, s=22, zorder=3)
        med = statistics.median(accs)
        ax.vlines(med, y - 0.3, y + 0.3, color=colour, lw=2)
        ax.text(max(accs) + 0.4, y, f"{med:.1f}" + ("" if len(accs) >= 3 else f" ({len(accs)} seed)"),
                va="center", fontsize=9)
    ax.set_yticks(ys, [ROUND2_LABELS[n] for n in names], fontsize=9)
    ax.set_xlabel("test accuracy %, each seed (dots) and the median (bar)")
    ax.set_title("Fashion-MNIST; conv: 5,000 training images", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    lo = min(r["test_acc"] * 100 for n in names for r in runs[n]["results"]["runs"])
    ax.set_xlim(lo - 2, 95)
    for i, n in enumerate(names):
        hist = runs[n]["results"]["runs"][0]["history"]
        bx.plot([h["epoch"] for h in hist], [h["val_acc"] * 100 for h in hist], marker="o", ms=3,
                color=f"C{i % 10}", ls="-" if i < 10 else "--", label=n)
    bx.set_xlabel("epoch (seed 0)")
    bx.set_ylabel("validation accuracy %")
    bx.set_title("Validation curves: flat by the end?", fontsize=10)
    bx.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # outside the curves
    bx.grid(alpha=0.3)
    fig.savefig(RESULTS / "round2.png", dpi=100)
    plt.close(fig)
    return ["results/round2.png"]


MEMORY_ROWS = [("bp", "backprop"), ("mf", "Mono-Forward"), ("dfa", "DFA"), ("drtp", "DRTP"),
               ("fg-local", "forward gradient, local-guided"), ("fg-weight", "forward gradient, weight perturbation"),
               ("ff", "Forward-Forward"), ("cafo", "CaFo, closed form")]


def memory_table(mem: dict | None) -> str:
    """MiB of peak RSS above the start per method and MLP, the autograd-saved peak in brackets."""
    if not mem:
        return "No memory record."
    lines = ["| method | 784-1000-1000 | 784-6x2000 |", "|---|---|---|"]
    for name, label in MEMORY_ROWS:
        cells = []
        for arch in MEMORY_ARCHS:
            m = mem["results"].get(arch, {}).get(name)
            saved = m and m["autograd_saved_peak_bytes"] / 2**20
            cells.append("-" if not m else f"{m['peak_rss_above_start'] / 2**20:.1f} ({saved:.1f})" if saved
                         else f"{m['peak_rss_above_start'] / 2**20:.1f} (0)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def blocks(rs) -> dict[str, str]:
    runs, mem = load(rs)
    r2, mem2 = load_round2(rs)
    return {"results": table(runs, mem) + "\n\n" + "\n".join(f"![{Path(p).stem}]({p})" for p in PLOT_FILES),
            "memory": memory_table(mem),
            "round2": round2_table(r2, mem2) + "\n\n" + "\n".join(f"![{Path(p).stem}]({p})" for p in ROUND2_PLOTS),
            **{f"screens-{stem}": screens_table(rs, stem) for stem in SCREEN_FILES}}


SCREEN_FILES = ["ff-round5"]  # screen files (screens/<name>.yaml) whose records make a generated block each
SCREEN_KEYS = ("val_acc_goodness", "val_acc_combined", "val_acc_probe")


def screens_table(rs, stem: str) -> str:
    """Every screen of ``screens/<stem>.yaml`` with the median over its records (validation only)."""
    import statistics

    import yaml

    spec = yaml.safe_load((HERE / "screens" / f"{stem}.yaml").read_text())
    recs = rs.glob(f"screens/results/{stem}.*.json") + rs.glob(f"screens/results/{stem}-2*.json")
    runs: dict[str, list[dict]] = {}
    for rec in recs:
        if rec["results"].get("test_split_read") is not False:  # a screen never reads the test split
            raise SystemExit(f"{rec['_path']}: a screen record that does not say the test split went unread")
        for name, screen in rec["results"]["screens"].items():
            runs.setdefault(name, []).append(screen["summary"])
    select, (lo, hi) = spec["select"], spec["window"]

    def med(name, key, stat):
        return statistics.median(r[key][stat] for r in runs[name]) * 100

    ranked = [n for n in spec["screens"] if n in runs]
    chosen = max(ranked, key=lambda n: med(n, select, "window_mean")) if ranked else None
    lines = [f"| screen | overrides | records | best {select} | mean of epochs {lo}-{hi}: goodness / combined / probe |",
             "|---|---|---:|---:|---:|"]
    for name, over in spec["screens"].items():
        shown = ", ".join(f"`{o}`" for o in over) or "none"
        if name not in runs:
            lines.append(f"| {name} | {shown} | 0 | not run | - |")
            continue
        mark = "**" if name == chosen else ""
        means = " / ".join(f"{med(name, k, 'window_mean'):.2f}" for k in SCREEN_KEYS)
        lines.append(f"| {mark}{name}{mark} | {shown} | {len(runs[name])} | {med(name, select, 'best'):.2f} | {means} |")
    lines.append("")
    lines.append(f"Median over each screen's records; ranked by the mean {select} of epochs {lo}-{hi} (bold: the highest), "
                 f"from {len(recs)} record{'s' if len(recs) != 1 else ''} of `screen.py screens/{stem}.yaml`; "
                 "the test split was never read.")
    return "\n".join(lines)


PLOT_FILES = ["results/accuracy.png", "results/curves.png", "results/memory.png"]
ROUND2_PLOTS = ["results/round2.png"]


def main() -> int:
    from forwardonly.bench.blocks import write_blocks
    from forwardonly.bench.record import RecordSet

    rs = RecordSet(HERE)
    runs, mem = load(rs)
    if not runs:
        raise SystemExit(f"no results in {RESULTS}; run run.py first")
    made = blocks(rs)
    assert plots(runs, mem) == PLOT_FILES[: 2 + bool(mem)]
    assert round2_plots(load_round2(rs)[0]) == ROUND2_PLOTS
    write_blocks(HERE / "README.md", made)
    print(made["results"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
