"""The distributed README's table, from the committed records only (nothing is re-run).

    python benchmarks/distributed/report.py            # print it
    python benchmarks/distributed/report.py --write    # replace README.md's generated block

Records of one mode, objective, shape and UTC day form one row: every figure is the
median over the row's records, speedups with their range. ``results/history/`` holds
records an earlier ``run.py`` overwrote, restored from the commits that held them.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def groups(rs) -> list[list[dict]]:
    out: dict[tuple, list] = {}
    for r in rs.glob("results/*"):
        c = r["config"]
        if "mode" not in c:  # scaling_check records
            continue
        key = (r["created"][:10], c["mode"], c.get("loss", "lm"), c["batch_per_rank"], c["seq"])
        out.setdefault(key, []).append(r)
    return [sorted(out[k], key=lambda r: r["created"]) for k in sorted(out, key=lambda k: (k[0], k[1], k[3] * k[4], k[2]),
                                                                      reverse=False)]


def table(rs) -> str:
    from forwardonly.bench.report import spread

    head = ("| day | mode | objective | batch/rank x seq | tokens/rank/step | runs | 1 process: step (s) | 2 processes: step (s) "
            "| **speedup, wall (x)** | speedup, CPU time (x) | bytes/rank/step | records (commit) |")
    lines = [head, "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for recs in groups(rs):
        c = recs[0]["config"]
        one = [r["results"]["1"]["median_step_s"] for r in recs]
        two = [r["results"]["2"]["median_step_s"] for r in recs]
        wall = [r["results"]["2"]["speedup"] for r in recs]
        cpu = [r["results"]["2"]["speedup_if_uncontended"] for r in recs]
        sent = {r["results"]["2"]["bytes_per_step_per_rank"] for r in recs}
        files = ", ".join(f"`{Path(r['_path']).relative_to(HERE / 'results').as_posix()}` "
                          f"({str((r.get('git') or {}).get('commit'))[:7]})" for r in recs)
        tokens = c["batch_per_rank"] * c["seq"]
        lines.append(f"| {recs[0]['created'][:10]} | {c['mode']} | {c.get('loss', 'lm')} | {c['batch_per_rank']} x "
                     f"{c['seq']} | {tokens} | {len(recs)} | {statistics.median(one):.3f} | {statistics.median(two):.3f} "
                     f"| **{spread(wall, digits=2)}** | {spread(cpu, digits=2)} | {'/'.join(f'{b:.0f}' for b in sorted(sent))} "
                     f"| {files} |")
    return "\n".join(lines)


def scaling_table(rs) -> str:
    """``scaling_check.py``'s records: per kind of work, the median time alone and of each of two processes at
    once, and the throughput ratio ``2 x alone / each of the pair`` over every pair member of every record."""
    from forwardonly.bench.report import spread

    recs = rs.glob("results/scaling_check.*.json")
    if not recs:
        return "(no record of scaling_check.py yet)"
    lines = ["| work | records (commit) | alone (s) | each of two at once (s) | throughput ratio (x) | 1-min load average |",
             "|---|---|---:|---:|---:|---|"]
    for kind, what in (("forward", "forward with the LM loss"), ("zo", "ZO-SGD step (two perturbed forwards + update)")):
        alone = [r["results"][kind]["alone"]["median_s"] for r in recs]
        pair = [p["median_s"] for r in recs for p in r["results"][kind]["pair"]]
        ratio = [x for r in recs for x in r["results"][kind]["throughput_ratio"]]
        commits = ", ".join(sorted({str((r.get("git") or {}).get("commit"))[:7] for r in recs}))
        load = [x for r in recs for x in r["load_average_1min"]]
        lines.append(f"| {what} | {len(recs)} ({commits}) | {spread(alone, digits=3)} | {spread(pair, digits=3)} "
                     f"| {spread(ratio, digits=2)} | {min(load):.1f}-{max(load):.1f} |")
    return "\n".join(lines)


def blocks(rs) -> dict[str, str]:
    return {"results": table(rs), "scaling": scaling_table(rs)}


if __name__ == "__main__":
    from forwardonly.bench.blocks import suite_main

    sys.exit(suite_main(HERE, blocks))
