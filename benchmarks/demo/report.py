"""The demo's README tables, from the committed records only (reads JSON; runs nothing).

    python benchmarks/demo/report.py            # print every generated block
    python benchmarks/demo/report.py --write    # replace them in README.md

``forwardonly demo --record benchmarks/demo/results`` writes one ``demo.<UTC>.json`` per run. Runs of the same
recipe (optimizer, its options, scheme, steps, batch) form one row: medians over their records with the
range, never the best run. ``final_norm.*.json`` (``final_norm.py``) adds what training the final norm alone
can reach.
"""

from __future__ import annotations

import json
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
    return f"{optim['name']} ({opts}) on {scheme}, {cfg['steps']} steps x {cfg['batch_size']}"


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
                   f"{cell(recs, lambda x: 100 * x['test_before']['accuracy'], '{:.2f}')} -> "
                   f"{cell(recs, lambda x: 100 * x['test_after']['accuracy'], '{:.2f}')}",
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


def blocks(rs) -> dict[str, str]:
    return {"demo-runs": runs_table(rs), "demo-final-norm": final_norm_table(rs)}


if __name__ == "__main__":
    from forwardonly.bench.blocks import suite_main

    sys.exit(suite_main(HERE, blocks))
