"""The offload README's tables, from the committed records only (nothing is re-run).

    python benchmarks/offload/report.py            # print them
    python benchmarks/offload/report.py --write    # replace README.md's generated blocks

``train-path``: the suite's experiments run through ``forwardonly train`` by the shared runner
(``results/runs/``), one row per experiment: whole-process peak RSS over the whole run (set-up and
loading included), against the in-memory run and the fp32 weights, and seconds per step.

``results``: the records of the suite's former trainer (``run.py``, removed; 25 Nov), one row each and a
row of medians. Memory there is whole-process peak RSS (``VmHWM``) over the streamed run's steps only,
against the fp32 weights; peak anonymous memory follows, labelled.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GiB = 2**30


def row(r: dict) -> dict:
    res = r["results"]
    s, w = res["streamed_alone"], res["weight_bytes_fp32"]
    return {"rss": s["peak_rss"] / GiB, "rss_x": s["peak_rss"] / w, "anon": s["peak_anon"] / GiB,
            "anon_x": s["peak_anon"] / w, "mem_step": res["median_in_memory_step_s"],
            "str_step": res["median_streamed_step_s"], "ratio": res["step_time_ratio"], "cpu": res["step_cpu_ratio"],
            "bitwise": res["losses_bitwise_equal"] and res["params_bitwise_equal"]}


def table(recs: list[dict]) -> str:
    head = ("| record | commit | peak RSS, whole process, streamed steps (GiB) | x fp32 weights | peak anon (GiB) "
            "| x fp32 weights (anon) | in-memory step (s) | streamed step (s) | x in-memory (wall) | x in-memory (CPU) "
            "| losses and weights bitwise equal |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    rows = [row(r) for r in recs]
    for r, x in zip(recs, rows):
        git = r.get("git") or {}
        lines.append(f"| `{Path(r['_path']).name}` | {str(git.get('commit'))[:7]}{' (dirty)' if git.get('dirty') else ''} "
                     f"| {x['rss']:.2f} | {x['rss_x']:.2f} | {x['anon']:.2f} | {x['anon_x']:.2f} | {x['mem_step']:.2f} "
                     f"| {x['str_step']:.2f} | {x['ratio']:.2f} | {x['cpu']:.2f} | {'yes' if x['bitwise'] else 'NO'} |")
    if len(rows) > 1:
        med = {k: statistics.median(x[k] for x in rows) for k in rows[0] if k != "bitwise"}
        lines.append(f"| **median of {len(rows)} runs** | | {med['rss']:.2f} | **{med['rss_x']:.2f}** | {med['anon']:.2f} "
                     f"| {med['anon_x']:.2f} | {med['mem_step']:.2f} | {med['str_step']:.2f} | **{med['ratio']:.2f}** "
                     f"| {med['cpu']:.2f} | {'yes' if all(x['bitwise'] for x in rows) else 'NO'} |")
        rss, ratio = med["rss_x"], med["ratio"]
    else:
        rss, ratio = rows[0]["rss_x"], rows[0]["ratio"]
    loads = [v for r in recs for v in r["load_average_1min"]]
    lines += ["", (f"1-minute load average over the runs {min(loads):.1f}-{max(loads):.1f} on "
                   f"{recs[0]['cpu_count']} CPUs. Targets, on the median: peak memory <= 0.5x the weights: "
                   f"**{'met' if rss <= 0.5 else 'missed'}** on whole-process peak RSS over the steps ({rss:.2f}x; "
                   "the whole run with set-up: the train-path table); step time <= 1.5x in-memory: "
                   f"**{'met' if ratio <= 1.5 else 'missed'}** ({ratio:.2f}x).")]
    return "\n".join(lines)


def suite_table(rs) -> str:
    """The suite's experiments run through ``forwardonly train`` (``benchmarks/zo_bench/run.py --suite offload``),
    peak RSS also against the model's fp32 weights (4 bytes per parameter: every parameter is trained)."""
    from forwardonly.bench.report import experiments_table

    runs = rs.glob("results/runs/*.json")
    params = {r["results"]["trainable_parameters"] for r in runs if r.get("status") == "ok"}
    return experiments_table(runs, "in-memory", {"fp32 weights": 4 * max(params)} if params else None)


def blocks(rs) -> dict[str, str]:
    recs = sorted(rs.glob("results/tinyllama-1.1b*.json"), key=lambda r: r["created"])
    return {"results": table(recs), "train-path": suite_table(rs)}


if __name__ == "__main__":
    from forwardonly.bench.blocks import suite_main

    sys.exit(suite_main(HERE, blocks))
