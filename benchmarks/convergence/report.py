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


def blocks(rs) -> dict[str, str]:
    """README.md's generated block ``report``, from the records of ``rs`` (a RecordSet of this folder)."""
    from forwardonly.bench.convergence import plot_plans, render

    recs = _records(rs)
    text = render(recs) or "No result records yet."
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


def main(argv=None) -> int:
    from forwardonly.bench.blocks import suite_main

    return suite_main(HERE, blocks, argv, also_write=write_plots)


if __name__ == "__main__":
    sys.exit(main())
