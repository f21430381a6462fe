"""The demo's README tables, from the committed records only (reads JSON; runs nothing).

    python benchmarks/demo/report.py            # print every generated block
    python benchmarks/demo/report.py --write    # replace them in README.md

``forwardonly demo --record benchmarks/demo/results`` writes one ``demo.<UTC>.json`` per run. Runs of the same
recipe (optimizer, its options, scheme, steps, batch) form one row: medians over their records with the
range, never the best run. ``final_norm.*.json`` (``final_norm.py``) adds what training the final norm alone
can reach.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

MiB = 2**20


def spread(values, fmt="{:.2f}") -> str:
    med, lo, hi = (fmt.format(v) for v in (statistics.median(values), min(values), max(values)))
    return med if lo == hi else f"{med} [{lo}, {hi}]"


def recipe(rec) -> str:
    """A run's recipe as the table names it: optimizer and options, scheme, steps x batch."""
    cfg = rec["config"]
    optim = dict(cfg["optim"])
    optim.update(optim.pop("options", None) or {})
    shown = {k: optim[k] for k in ("lr", "eps", "q") if k in optim}
    scheme = cfg["scheme"]["name"] + (" norm" if cfg["scheme"].get("norm") else "")
    opts = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    model = cfg.get("model", {})
    head = ""
    if model.get("head_init") == "linear_probe":  # a classifier whose head is fitted before any step
        where = f"block {model['layers']}" if model.get("layers") else "the last block"
        head = f"linear-probe head on {where} (l2 {model.get('head_l2', 1.0):g}), then "
    return f"{head}{optim['name']} ({opts}) on {scheme}, {cfg['steps']} steps x {cfg['batch_size']}"


def demo_runs(rs) -> dict[str, list[dict]]:
    """{recipe: [records]} of the ``forwardonly demo`` records, in the order first recorded."""
    out: dict[str, list[dict]] = {}
    for rec in rs.glob("results/demo.*.json"):
        out.setdefault(recipe(rec), []).append(rec)
    return out


def shipped(rs) -> list[dict]:
    """The records of the recipe the package ships (``src/forwardonly/configs/demo.yaml``)."""
    from forwardonly.cli.demo import CONFIG
    from forwardonly.config import load_config, to_dict
    from forwardonly.lm.config import TrainConfig

    want = recipe({"config": to_dict(load_config(TrainConfig, CONFIG))})
    return demo_runs(rs).get(want, [])


def runs_table(rs) -> str:
    from forwardonly.bench.report import table

    def cell(recs, key, fmt="{:.0f}"):
        return spread([key(r["results"]) for r in recs], fmt)

    return table(["recipe", "runs", "test accuracy before -> after %", "forwards", "training s", "total s",
                  "peak RSS MiB", "commits"],
                 [[name, len(recs),
                   (f"{cell(recs, lambda x: 100 * x['test_before']['accuracy'], '{:.2f}')} -> "
                   f"{cell(recs, lambda x: 100 * x['test_after']['accuracy'], '{:.2f}')}"),
                   cell(recs, lambda x: x["forwards"]), cell(recs, lambda x: x["train_time_s"]),
                   cell(recs, lambda x: x["total_time_s"]), cell(recs, lambda x: x["peak_rss_bytes"] / MiB),
                   ", ".join(sorted({r["git"]["commit"][:7] for r in recs}))]
                  for name, recs in demo_runs(rs).items()])


def final_norm_table(rs) -> str:
    from forwardonly.bench.report import table

    rows = []
    for rec in rs.glob("results/final_norm.*.json"):
        r = rec["results"]
        z, c, ch = r["zero_shot"], r["ceiling_lbfgs"], r["chosen_on_validation"]
        best = max(r["zo_grid"], key=lambda g: sorted(g["validation_final"])[1])
        rows.append([Path(rec["_path"]).name, f"{100 * z['validation']:.2f} / {100 * z['test']:.2f}",
                     " / ".join(f"{100 * c[s]:.2f}" for s in ("train", "validation", "test")),
                     f"lr {ch['lr']:g}, q {ch['q']}, {ch['schedule']}, {2 * ch['q'] * ch['steps']} forwards",
                     f"{spread([100 * v for v in best['validation_final']])} (3 seeds)",
                     f"{100 * ch['test_seed0']:.2f} (seed 0)"])
    return table(["record", "zero-shot % (validation / test)", "L-BFGS ceiling % (train / validation / test)",
                  "best simulated ZO-SGD, chosen on validation", "its validation %", "its test %"], rows)


FEATURES = {"last": "last token", "mean": "mean over tokens",
            "normed": "last token through the final norm (model.layers)"}
"""What each feature of a ``probe_layers`` record is, as its tables and figure name it."""


def probe_layers(rec) -> dict[str, list[tuple[int, float, float]]]:
    """``{feature: [(layer, best validation accuracy over the L2 weights, that l2)]}`` of a ``probe_layers``
    record, training on every training sentence (``k == "all"``)."""
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for r in rec["results"]["rows"]:
        if r["k"] != "all":
            continue
        best = out.setdefault(r["feature"], {}).get(r["layer"])
        if best is None or r["validation"] > best[0]:
            out[r["feature"]][r["layer"]] = (r["validation"], r["l2"])
    return {f: [(layer, *v) for layer, v in sorted(d.items())] for f, d in out.items()}


def probe_layers_table(rs) -> str:
    from forwardonly.bench.report import table

    rows = []
    for rec in rs.glob("results/probe_layers.*.json"):
        res = rec["results"]
        for feature, curve in probe_layers(rec).items():
            last = curve[-1]
            top = max(curve, key=lambda c: c[1])
            rows.append([Path(rec["_path"]).name, FEATURES[feature],
                         f"{100 * last[1]:.1f} (l2 {last[2]:g})", f"{top[0]}: {100 * top[1]:.1f} (l2 {top[2]:g})",
                         res["train_n"], res["validation_n"], rec["git"]["commit"][:7]])
    return table(["record", "feature", "last layer's head: validation % (best L2)", "best layer: validation %",
                  "training sentences", "validation sentences", "commit"], rows)


def write_figures(rs) -> None:
    """``report/probe_layers.png``: validation accuracy of the linear head against the layer it reads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = list(rs.glob("results/probe_layers.*.json"))
    if not recs:
        return
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for feature, curve in probe_layers(recs[-1]).items():
        ax.plot([c[0] for c in curve], [100 * c[1] for c in curve], marker=".",
                label=FEATURES[feature])
    ax.set_xlabel("layer the head reads (0 = embeddings, last = after the final norm)")
    ax.set_ylabel("validation accuracy %")
    ax.set_title("SmolLM2-135M, linear head on 1,200 sentences (best L2 per layer)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    (HERE / "report").mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(HERE / "report" / "probe_layers.png", dpi=110)
    plt.close(fig)


def blocks(rs) -> dict[str, str]:
    return {"demo-runs": runs_table(rs), "demo-final-norm": final_norm_table(rs),
            "demo-probe-layers": probe_layers_table(rs)}


if __name__ == "__main__":
    from forwardonly.bench.blocks import suite_main

    sys.exit(suite_main(HERE, blocks, also_write=write_figures))
