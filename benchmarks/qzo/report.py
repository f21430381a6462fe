"""Tables for the README from the committed results (reads JSON only; runs nothing).

    python benchmarks/qzo/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MB = 2**20


def load(name):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def memory_table() -> str:
    rows = ["| mode | run | model tensors (MB) | peak anon above baseline (MB) | peak RSS above baseline (MB) | "
            "peak RSS, whole process (MB) |", "|---|---|---|---|---|---|"]
    base = load("memory_none.json")
    if base:
        b = base["results"]["baseline"]
        rows.append(f"| baseline: libraries, tokenizer, batch, no model | - | - | - | - | {b['rss'] / MB:.0f} |")
    found: dict[str, list] = {}
    for mode in ("bf16-compute", "bf16", "int4"):
        for run, suffix in ((1, ""), (2, "_r2")):
            rec = load(f"memory_{mode}{suffix}.json")
            if not rec:
                continue
            r = rec["results"]
            found.setdefault(mode, []).append(r)
            rows.append(f"| {mode} | {run} | {r['model_bytes']['total'] / MB:.1f} | "
                        f"{r['peak_anon_above_baseline'] / MB:.1f} | {r['peak_rss_above_baseline'] / MB:.1f} | "
                        f"{r['zo_steps']['peak_rss'] / MB:.0f} |")
    lines = ["\n".join(rows), ""]
    if "int4" in found:
        q = found["int4"]
        for ref in ("bf16-compute", "bf16"):
            if ref not in found:
                continue
            f = found[ref]
            lines.append(f"int4 / {ref}:")
            for key, what in (("peak_anon_above_baseline", "anon above baseline"),
                              ("peak_rss_above_baseline", "RSS above baseline")):
                ratios = [a[key] / b[key] for a in q for b in f]
                lines.append(f"- {what}: {min(ratios):.3f} to {max(ratios):.3f} (every int4 run over every {ref} run)")
            t = [a["zo_steps"]["peak_rss"] / b["zo_steps"]["peak_rss"] for a in q for b in f]
            lines.append(f"- whole-process peak RSS: {min(t):.3f} to {max(t):.3f}")
            m = q[0]["model_bytes"]["total"] / f[0]["model_bytes"]["total"]
            lines.append(f"- model tensors alone: {m:.3f}")
    return "\n".join(lines)


def train_table() -> str:
    rows = ["| mode | trainable | lr | eps | clip | steps run | acc before | acc after | s/step | total s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ("fp32", "bf16", "int4", "int8"):
        rec = load(f"train_{mode}.json")
        if not rec:
            continue
        c, r = rec["config"], rec["results"]
        o = c["opt"]
        rows.append(f"| {mode} | {c['trainable']:,} | {o['lr']:g} | {o['eps']:g} | {o.get('clip', '-')} | "
                    f"{r['steps_run']} | {100 * r['acc_before']:.2f} | {100 * r['acc_after']:.2f} | "
                    f"{r['s_per_step']:.0f} | {r['total_s']:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(memory_table())
    print()
    print(train_table())
