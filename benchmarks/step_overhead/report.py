"""Tables of the step-overhead results, from the committed records only (nothing is re-run).

    python benchmarks/step_overhead/report.py           # print the tables
    python benchmarks/step_overhead/report.py --write   # also replace them in README.md

Every record under ``results/`` (``results/history/`` holds committed records that a
later run had overwritten, restored from git) counts. Records of one shape, thread
count and UTC day form one row: each cell is the median over that row's records
with the range and the count, and a target is met when the median meets it.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = [("zosgd_rademacher", "ZOSGD rademacher"),
           ("zosgd_rademacher_deferred", "ZOSGD rademacher, deferred update"),
           ("zosgd_rademacher_paired", "ZOSGD rademacher, paired"),
           ("zosgd_rademacher_paired_deferred", "ZOSGD rademacher, paired + deferred"),
           ("zosgd_rademacher_torch", "ZOSGD rademacher, torch path (no kernel)"),
           ("zosgd_gaussian", "ZOSGD gaussian"),
           ("zosgd_rademacher_unfused", "ZOSGD rademacher, unfused path"),
           ("mezo_reference_gaussian", "MeZO-style (reference twin, gaussian)")]


def _key(record):
    b, t = map(int, record["results"]["shape"].split("x"))
    return b * t, record["config"]["threads"], record["created"][:10]


def rows(rs) -> list[list[dict]]:
    """Records grouped by (shape, threads, UTC day), in that order; each group oldest first."""
    groups: dict[tuple, list] = {}
    for rec in rs.glob("results/*"):
        groups.setdefault(_key(rec), []).append(rec)
    return [sorted(groups[k], key=lambda r: r["created"]) for k in sorted(groups)]


def _label(recs) -> str:
    r = recs[0]
    threads = r["config"]["threads"]
    return f"{r['results']['shape']}, {threads} thread{'s' if threads > 1 else ''}, {r['created'][:10]}"


def _cell(values: list[float], target: float) -> str:
    if not values:
        return "-"
    from forwardonly.bench.report import spread as median_range

    med = statistics.median(values)
    spread = median_range(values, digits=3)
    runs = f"{len(values)} run{'s' if len(values) > 1 else ''}"
    return f"{spread} ({runs}, {'met' if med <= target else 'missed'})"


def _ratio_table(groups, cols, key, seconds, title):
    lines = [title, "",
             "| shape (batch x tokens), threads, day | runs | forward (s) | " + " | ".join(lab for _, lab in cols)
             + " | target |", "|---|---|---|" + "---|" * len(cols) + "---|"]
    for recs in groups:
        target = recs[0]["results"]["targets"]["ratio"]
        fwd = statistics.median(r["results"][seconds]["forward"] for r in recs)
        cells = [_cell([r["results"][key][k] for r in recs if k in r["results"].get(key, {})], target)
                 for k, _ in cols]
        lines.append(f"| {_label(recs)} | {len(recs)} | {fwd:.3f} | " + " | ".join(cells) + f" | <= {target:.2f} |")
    return lines


def tables(rs) -> str:
    groups = rows(rs)
    cols = [(k, lab) for k, lab in COLUMNS if any(k in r["results"]["median_s"] for g in groups for r in g)]
    lines = _ratio_table(groups, cols, "cpu_ratio_step_over_2fwd", "median_cpu_s",
                         "Step / (2 x forward), process CPU time (the work done); each run's ratio is of its medians "
                         "over interleaved rounds, each cell the median over the row's runs [lowest-highest]:")
    lines += [""] + _ratio_table(groups, cols, "ratio_step_over_2fwd", "median_s",
                                 "Step / (2 x forward), wall-clock time, the same runs:")
    lines += ["", ("Peak RSS during a step / peak RSS during a plain forward (absolute, whole process, "
                   "weights included), the same runs:"), "",
              "| shape, threads, day | runs | forward peak (MiB) | " + " | ".join(lab for _, lab in cols) + " | target |",
              "|---|---|---|" + "---|" * len(cols) + "---|"]
    for recs in groups:
        target = recs[0]["results"]["targets"]["peak_rss_ratio"]
        fwd = statistics.median(r["results"]["memory"]["forward"]["peak_rss"] / 2**20 for r in recs)
        cells = [_cell([r["results"]["peak_rss_ratio_step_over_forward"][k] for r in recs
                        if k in r["results"]["peak_rss_ratio_step_over_forward"]], target) for k, _ in cols]
        lines.append(f"| {_label(recs)} | {len(recs)} | {fwd:.0f} | " + " | ".join(cells) + f" | <= {target:.2f} |")
    lines += ["", "Runs:", ""]
    for recs in groups:
        for r in recs:
            res, cfg, m = r["results"], r["config"], r["machine"]
            loads = [round(x[0], 1) for x in res["load_average_1_5_15min_per_round"]]
            git = r.get("git") or {}
            lines.append(f"* {_label(recs)}: `{Path(r['_path']).relative_to(HERE).as_posix()}`, "
                         f"{res['timed_rounds']} timed rounds after 1 warm-up round, {cfg['model']}, "
                         f"{m.get('cpu_model', '?')} ({m.get('cpu_count')} cores), 1-min load average over the run "
                         f"{min(loads)}-{max(loads)}, git {str(git.get('commit'))[:10]}"
                         f"{' (dirty)' if git.get('dirty') else ''}, torch {r['versions'].get('torch')}, {r['created']}.")
    return "\n".join(lines)


def blocks(rs) -> dict[str, str]:
    return {"tables": tables(rs)}


def main(argv=None) -> int:
    from forwardonly.bench.blocks import suite_main

    return suite_main(HERE, blocks, argv)


if __name__ == "__main__":
    sys.exit(main())
