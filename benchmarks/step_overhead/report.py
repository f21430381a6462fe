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
        if rec.get("name") == "step_overhead" and "per_threads" not in rec["results"]:
            groups.setdefault(_key(rec), []).append(rec)
    return [sorted(groups[k], key=lambda r: r["created"]) for k in sorted(groups)]


def load_invocations(rs) -> list[dict]:
    """The records that measured several thread counts in the same rounds (issue 18), oldest first."""
    return sorted((r for r in rs.glob("results/*") if r.get("name") == "step_overhead" and "per_threads" in r["results"]),
                  key=lambda r: r["created"])


MIN_INVOCATIONS = 3


SAME_CODE = HERE / "same_code.json"  # commits whose timed code is identical (tests/bench checks it with git)


def code_of(commit: str) -> str:
    """The commits of ``commit``'s group in ``same_code.json`` (short, comma-joined), else ``commit`` itself:
    invocations made at different commits of the same timed code (``src/``, ``run.py``) share a row."""
    import json

    short = str(commit)[:10]
    for group in json.loads(SAME_CODE.read_text())["groups"] if SAME_CODE.is_file() else []:
        if any(short == c[:10] for c in group["commits"]):
            return ", ".join(c[:10] for c in group["commits"])
    return short


def _groups(records: list[dict]) -> dict:
    """``(tokens, shape, threads, code) -> [(record, its per-thread results), ...]`` (:func:`code_of`)."""
    groups: dict = {}
    for r in records:
        b, t = map(int, r["results"]["shape"].split("x"))
        for n, res in r["results"]["per_threads"].items():
            key = (b * t, r["results"]["shape"], int(n), code_of(r["git"]["commit"]))
            groups.setdefault(key, []).append((r, res))
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][2], kv[0][3])))


def _spread(values: list[float], target: float | None) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    cell = f"{med:.3f} [{min(values):.3f}-{max(values):.3f}] ({len(values)})"
    if target is None or len(values) < MIN_INVOCATIONS:
        return cell
    return cell + (" met" if med <= target else " missed")


def _threads_label(r, n: int) -> str:
    default = r["config"].get("default_threads")
    return f"{n} thread{'s' if n > 1 else ''}" + (" (torch default)" if default == n else "")


def invocation_tables(records: list[dict]) -> str:
    """Median over invocations, with the range, per shape, thread count and code (:func:`code_of`)."""
    if not records:
        return "No invocations with several thread counts yet."
    variants = [k for k, _ in COLUMNS if any(k in r["results"]["peak_rss_ratio_step_over_forward"] for r in records)]
    labels = dict(COLUMNS)
    lines = []
    for key, title in (("ratio_step_over_2fwd", "wall-clock"), ("cpu_ratio_step_over_2fwd", "process CPU time")):
        lines += [(f"Step / (2 x forward), {title}: median over invocations [min-max] (invocations); each "
                   "invocation's figure is the median of its interleaved rounds:"), "",
                  "| shape, threads | commits (same code) | forward (s) | " + " | ".join(labels[v] for v in variants)
                  + " | target |", "|---|---|---|" + "---|" * len(variants) + "---|"]
        for (_, shape, n, commit), members in _groups(records).items():
            target = members[0][0]["results"]["targets"]["ratio"]
            fwd = statistics.median(res["median_s"]["forward"] for _, res in members)
            cells = [_spread([res[key][v] for _, res in members if v in res[key]], target) for v in variants]
            lines.append(f"| {shape}, {_threads_label(members[0][0], n)} | {commit} | {fwd:.3f} | "
                         + " | ".join(cells) + f" | <= {target:.2f} |")
        lines.append("")
    lines += ["Peak RSS during a step / during a plain forward (first thread count of each invocation):", "",
              "| shape | commits (same code) | " + " | ".join(labels[v] for v in variants) + " | target |",
              "|---|---|" + "---|" * len(variants) + "---|"]
    by_shape: dict = {}
    for r in records:
        by_shape.setdefault((r["results"]["shape"], code_of(r["git"]["commit"])), []).append(r)
    for (shape, commit), rs in by_shape.items():
        target = rs[0]["results"]["targets"]["peak_rss_ratio"]
        cells = [_spread([r["results"]["peak_rss_ratio_step_over_forward"][v] for r in rs
                          if v in r["results"]["peak_rss_ratio_step_over_forward"]], target) for v in variants]
        lines.append(f"| {shape} | {commit} | " + " | ".join(cells) + f" | <= {target:.2f} |")
    lines += ["", "Invocations:", ""]
    for r in records:
        res, m = r["results"], r["machine"]
        loads = [round(x[0], 1) for x in res["load_average_1_5_15min_per_round"]]
        rounds = ", ".join(f"{n}: {v['timed_rounds']}" for n, v in res["per_threads"].items())
        lines.append(f"* {r['created']}, {res['shape']}, timed rounds per thread count {rounds}, "
                     f"{r['config']['model']}, {m.get('cpu_model', '?')} ({m.get('cpu_count')} cores), "
                     f"1-min load average {min(loads)}-{max(loads)}, git {str(r['git']['commit'])[:10]}"
                     f"{' (dirty)' if r['git']['dirty'] else ''}, torch {r['versions'].get('torch')}.")
    return "\n".join(lines)


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


def load_profiles(rs) -> list[dict]:
    """The per-part profiles of ``parts.py``, oldest first."""
    return sorted((r for r in rs.glob("results/*") if r.get("name") == "step_overhead_profile"),
                  key=lambda r: r["created"])


def profile_tables(records: list[dict]) -> str:
    """One table per profile: every part's median wall and CPU seconds, and wall against a plain forward."""
    if not records:
        return "No per-part profiles yet."
    lines = []
    for r in records:
        cfg, med = r["config"], r["results"]["median_wall_cpu_s"]
        fwd = med["forward"]
        lines += [(f"{cfg['shape']}, {cfg['threads']} thread{'s' if cfg['threads'] > 1 else ''}, {cfg['rounds']} "
                   f"timed rounds, git {str(r['git']['commit'])[:10]}{' (dirty)' if r['git']['dirty'] else ''}, "
                   f"{r['created']}, 1-min load average {r['results']['load_average_1_5_15min'][0]:.1f}:"), "",
                  "| variant | part | wall (s) | wall / forward | CPU (s) |", "|---|---|---|---|---|",
                  f"| - | plain forward | {fwd[0]:.4f} | 1.000 | {fwd[1]:.4f} |"]
        for name, parts in med.items():
            if name == "forward":
                continue
            for part, (wall, cpu) in parts.items():
                lines.append(f"| {name} | {part} | {wall:.4f} | {wall / fwd[0]:.3f} | {cpu:.4f} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def blocks(rs) -> dict[str, str]:
    return {"tables": invocation_tables(load_invocations(rs)) + "\n\n### Where a step's time goes (parts.py)\n\n"
            + profile_tables(load_profiles(rs)) + "\n\n### Earlier records (one thread count per invocation, "
            "before issue 18)\n\n" + tables(rs)}


if __name__ == "__main__":
    from forwardonly.bench.blocks import suite_main

    sys.exit(suite_main(HERE, blocks))
