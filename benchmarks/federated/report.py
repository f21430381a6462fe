"""The federated suite's README tables, from the committed records only (reads JSON; runs nothing).

    python benchmarks/federated/report.py            # print every generated block
    python benchmarks/federated/report.py --write    # replace them in README.md

Records are ``results/runs/*.json`` written by ``benchmarks/zo_bench/run.py --suite federated``. Accuracy
is on the task's test split in %, median [min-max] over seeds; the gap to centralised ZO is per seed
(same seed, same forwards), its median and range. Bytes are what each client sent per round (its packed
steps, :mod:`forwardonly.federated.wire`); memory is the whole run's peak RSS, loading included.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CENTRAL = "central-zo"
GAP_TARGET = 2.0  # points of accuracy (issue 23)
BYTES_TARGET = 64  # per client per round (issue 23)
MiB = 2**20


def _runs(rs) -> dict[str, dict[int, dict]]:
    """``{experiment: {seed: record}}`` of the ok runs (the newest record of an experiment x seed)."""
    out: dict[str, dict[int, dict]] = {}
    for rec in rs.glob("results/runs/*.json"):
        if rec.get("status") != "ok":
            continue
        out.setdefault(rec["experiment"], {})[rec["seed"]] = rec
    return out


def _acc(rec, key="test_after") -> float:
    return 100 * rec["results"][key]["accuracy"]


def results_table(rs) -> str:
    from forwardonly.bench.report import spread, table

    runs = _runs(rs)
    central = runs.get(CENTRAL, {})
    rows = []
    for name in sorted(runs, key=lambda n: (n != CENTRAL, n)):
        by_seed = runs[name]
        recs = list(by_seed.values())
        res = [r["results"] for r in recs]
        fed = recs[0]["config"].get("federated")
        gaps = [_acc(r) - _acc(central[s]) for s, r in by_seed.items() if s in central] if name != CENTRAL else []
        per_round = [x["bytes_per_client_round"] for x in res if "bytes_per_client_round" in x]
        setup = (f"{fed['clients']} clients, {fed['local_steps']} local steps x {res[0]['rounds']} rounds, "
                 f"alpha {fed['alpha'] if fed['alpha'] is not None else 'IID'}, {fed['aggregate']}, {fed['engine']}"
                 if fed else f"{recs[0]['config']['steps']} steps")
        rows.append([name, setup, len(recs), spread([_acc(r) for r in recs]),
                     spread([100 * x["test_after"]["macro_f1"] for x in res]), spread(gaps) if gaps else "-",
                     spread([x["forwards"] for x in res], digits=0),
                     spread(per_round, digits=0) if per_round else "-",
                     spread([x["memory"]["peak_rss"] for x in res if x.get("memory")], 1 / MiB, 0)])
    return table(["experiment", "setting", "seeds", "test accuracy %", "test macro-F1 %",
                  "gap to centralised (points, per seed)", "forwards", "bytes sent per client per round",
                  "peak RSS MiB"], rows)


def targets_table(rs) -> str:
    from forwardonly.bench.report import median, table

    runs = _runs(rs)
    central = runs.get(CENTRAL, {})
    rows = []
    for name, by_seed in sorted(runs.items()):
        if name == CENTRAL or not central:
            continue
        gaps = [_acc(r) - _acc(central[s]) for s, r in by_seed.items() if s in central]
        sent = max(r["results"]["bytes_per_client_round"] for r in by_seed.values())
        gap = median(gaps)
        rows.append([name, len(gaps), f"{gap:+.1f}", "met" if abs(gap) <= GAP_TARGET else "missed",
                     sent, "met" if sent <= BYTES_TARGET else "missed"])
    return table(["experiment", "seeds paired with centralised", "median gap (points)",
                  f"within {GAP_TARGET:g} points", "most bytes a client sent in a round",
                  f"<= {BYTES_TARGET} bytes"], rows)


def blocks(rs) -> dict[str, str]:
    return {"results": results_table(rs), "targets": targets_table(rs)}


if __name__ == "__main__":
    from forwardonly.bench.blocks import suite_main

    sys.exit(suite_main(HERE, blocks))
