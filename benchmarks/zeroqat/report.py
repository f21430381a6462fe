"""The ZeroQAT README's tables, from the committed records only (reads JSON; runs nothing).

    python benchmarks/zeroqat/report.py            # print every generated block
    python benchmarks/zeroqat/report.py --write    # replace them in README.md

Each run is a record ``results/runs/EXPERIMENT.seedN.<time>.json`` written by
``benchmarks/zo_bench/run.py --suite zeroqat``. Figures are medians over every ``ok`` record of an
experiment with their spread ``[min-max]``; memory is the whole-process peak RSS over the whole run
(loading, training and the test pass), as :class:`forwardonly.bench.measure.PeakMemory` measures it.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 2**20
REFERENCE = "bf16-zo"
TARGET_POINTS, TARGET_RATIO = 2.0, 0.5  # issue 23: within 2 points of bf16 ZO at <= 0.5x its peak memory


def runs(rs) -> dict[str, list[dict]]:
    """``ok`` records by experiment, in path order."""
    return rs.ok_by_experiment()


def _acc(rec) -> float:
    return 100 * rec["results"]["test_after"]["accuracy"]


def _peak(rec) -> float:
    return rec["results"]["memory"]["peak_rss"] / MiB


def runs_table(rs) -> str:
    from forwardonly.bench.report import spread

    rows = ["| experiment | seeds | test accuracy after % (median [min-max]) | per seed | "
            "**whole-run peak RSS (MiB)** | trained entries | forward passes | commit |",
            "|---|---|---|---|---|---:|---:|---|"]
    for name, recs in sorted(runs(rs).items()):
        recs = sorted(recs, key=lambda r: r["seed"])
        commits = sorted({r["git"]["commit"][:7] + ("+diff" if r["git"].get("dirty") else "") for r in recs})
        rows.append(f"| `{name}` | {', '.join(str(r['seed']) for r in recs)} | "
                    f"{spread([_acc(r) for r in recs], digits=2)} | {', '.join(f'{_acc(r):.1f}' for r in recs)} | "
                    f"**{spread([_peak(r) for r in recs], digits=0)}** | {recs[0]['results']['trainable_parameters']:,} | "
                    f"{recs[0]['results']['forwards']} | {', '.join(commits)} |")
    return "\n".join(rows)


def target_lines(rs) -> str:
    found = runs(rs)
    ref = found.get(REFERENCE)
    if not ref:
        return f"- no `{REFERENCE}` records yet: the target cannot be judged"
    acc0, mem0 = statistics.median(_acc(r) for r in ref), statistics.median(_peak(r) for r in ref)
    lines = []
    for name, recs in sorted(found.items()):
        if name == REFERENCE:
            continue
        acc, mem = statistics.median(_acc(r) for r in recs), statistics.median(_peak(r) for r in recs)
        gap, ratio = acc0 - acc, mem / mem0
        ok_acc, ok_mem = gap <= TARGET_POINTS, ratio <= TARGET_RATIO
        verdict = "**met**" if ok_acc and ok_mem else "**missed**"
        lines.append(f"- `{name}` vs `{REFERENCE}` ({len(recs)} and {len(ref)} seeds): accuracy {acc:.2f} % vs "
                     f"{acc0:.2f} %, {gap:+.2f} points behind ({'within' if ok_acc else 'outside'} {TARGET_POINTS:g}); "
                     f"peak RSS {mem:.0f} vs {mem0:.0f} MiB, **{ratio:.3f}x** ({'within' if ok_mem else 'above'} "
                     f"{TARGET_RATIO:g}x): target {verdict}")
    return "\n".join(lines)


def blocks(rs) -> dict[str, str]:
    """README.md's generated blocks."""
    return {"runs": runs_table(rs), "target": target_lines(rs)}


if __name__ == "__main__":
    from forwardonly.bench.blocks import suite_main

    sys.exit(suite_main(HERE, blocks))
