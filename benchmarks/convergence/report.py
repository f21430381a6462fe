"""The convergence suite's README block and plots, from the committed records only (nothing is re-run).

    python benchmarks/convergence/report.py            # print the block
    python benchmarks/convergence/report.py --write    # rewrite README.md's generated block and report/*.png

The tables and curves are :mod:`forwardonly.bench.convergence`'s: per cell, the headline of the final runs
(test accuracy, forwards to reach MeZO's final, the ratio to MeZO's, the gap to FO-Adam, the last 20 %
gain), then the validation-only sweeps and pilots. Every figure is a median over the records of a run with
its range; ``benchmarks/claims.py`` regenerates the block and fails when the README's text differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLOTS = HERE / "report"


def _records(rs) -> list[dict]:
    from forwardonly.bench.convergence import is_convergence

    return [r for r in rs.glob("results/*") if is_convergence(r)]


def probe_table(recs: list[dict]) -> str:
    """``probe_features.py``'s records: per k and feature, the probe's training and validation accuracy,
    median [min, max] over the draws (seeds)."""
    from forwardonly.bench.convergence import _spread, _table

    rows = [r for rec in recs for r in rec["results"]["rows"]]
    out = []
    for k in sorted({r["k"] for r in rows}):
        at_k = [r for r in rows if r["k"] == k]
        for name in ("pooler", "cls", "mean"):
            out.append([k, name, len(at_k), _spread([r[f"{name}_train"] for r in at_k]),
                        _spread([r[f"{name}_validation"] for r in at_k])])
    return _table(["k per class", "feature", "draws", "training % median [min, max]",
                   "validation % median [min, max]"], out)


def blocks(rs) -> dict[str, str]:
    """README.md's generated block ``report``, from the records of ``rs`` (a RecordSet of this folder)."""
    from forwardonly.bench.convergence import plot_plans, render

    recs = _records(rs)
    text = render(recs) or "No result records yet."
    probes = [r for r in rs.glob("results/*/probe_features.*.json") if r.get("name") == "convergence-probe-features"]
    if probes:
        text += ("\n\n### Setup E's floor by feature (`probe_features.py`, validation only)\n\n"
                 "A linear probe (`head_init`'s fit, C = 1) on all-MiniLM-L6's pooler output (what "
                 "`model.head_init: linear_probe` fits on), its [CLS] state, and the mean of its last hidden "
                 "states, over the draws of k training sentences per class.\n\n" + probe_table(probes))
    plots = [name for name, _ in plot_plans(recs)]
    if plots:
        text += "\n\n## Plots\n\n" + "\n".join(f"![{Path(n).stem}](report/{n})" for n in plots)
    return {"report": text}


def write_plots(rs) -> None:
    from forwardonly.bench.convergence import plot_plans
    from forwardonly.bench.plots import save

    PLOTS.mkdir(exist_ok=True)
    for name, draw in plot_plans(_records(rs)):
        save(draw(), PLOTS / name)


if __name__ == "__main__":
    from forwardonly.bench.blocks import suite_main

    sys.exit(suite_main(HERE, blocks, also_write=write_plots))
