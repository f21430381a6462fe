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
    rows = [("| mode | run | model tensors (MB) | peak anon above baseline (MB) | peak RSS above baseline (MB) | "
             "peak RSS, whole process (MB) |"), "|---|---|---|---|---|---|"]
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


def _v2_runs():
    """{(mode, allocator): [results, ...]} from results/v2 (streamed int4 load, two baselines)."""
    found: dict[tuple, list] = {}
    for path in sorted((RESULTS / "v2").glob("memory_*_r*.json")):
        mode, alloc, _ = path.stem[len("memory_"):].rsplit("_", 2)
        found.setdefault((mode, alloc), []).append(json.loads(path.read_text())["results"])
    return found


def _range(values) -> str:
    return f"{min(values):.3f}" if max(values) - min(values) < 5e-4 else f"{min(values):.3f} to {max(values):.3f}"


def memory_table_v2() -> str:
    """Second measurement: streamed int4 load, glibc allocator default vs fixed mmap threshold."""
    found = _v2_runs()
    if not found:
        return ""
    rows = [("| mode | allocator | run | model tensors (MB) | load-phase peak anon (MB) | held after load (MB) | "
             "step working set (MB) | peak anon above baseline (MB) | peak anon above library baseline (MB) | "
             "peak RSS, whole process (MB) |"), "|---|---|---|---|---|---|---|---|---|---|"]
    none = load("v2/memory_none.json")
    if none:
        r = none["results"]
        lib = r["baseline_with_model_code"]["anon"] - r["baseline"]["anon"]
        rows.append(f"| baseline: libraries, tokenizer, batch | - | - | - | - | - | - | 0 | - | "
                    f"{r['baseline']['rss'] / MB:.0f} |")
        rows.append(f"| library baseline: + the model's code (architecture on the meta device) | - | - | - | - | - | - | "
                    f"{lib / MB:.1f} | 0 | {r['baseline_with_model_code']['rss'] / MB:.0f} |")
    order = ("int4", "int4-fp32load", "bf16-compute", "bf16")
    for alloc in ("default", "mmap128k"):
        for mode in order:
            for i, r in enumerate(found.get((mode, alloc), []), 1):
                b = r["baseline"]["anon"]
                rows.append(
                    f"| {mode} | {alloc} | {i} | {r['model_bytes']['total'] / MB:.1f} | "
                    f"{(r['load']['peak_anon'] - b) / MB:.1f} | {(r['loaded']['anon'] - b) / MB:.1f} | "
                    f"{(r['zo_steps']['peak_anon'] - r['loaded']['anon']) / MB:.1f} | "
                    f"{r['peak_anon_above_baseline'] / MB:.1f} | {r['peak_anon_above_library_baseline'] / MB:.1f} | "
                    f"{r['zo_steps']['peak_rss'] / MB:.0f} |")
    lines = ["\n".join(rows), ""]
    for alloc in ("default", "mmap128k"):
        q = found.get(("int4", alloc))
        for ref in ("bf16-compute", "bf16"):
            f = found.get((ref, alloc))
            if not q or not f:
                continue
            lines.append(f"int4 / {ref}, allocator {alloc} (every int4 run over every {ref} run):")
            for key, what in (("peak_anon_above_baseline", "anon above baseline (first definition)"),
                              ("peak_anon_above_library_baseline", "anon above library baseline")):
                lines.append(f"- {what}: {_range([a[key] / c[key] for a in q for c in f])}")
            lines.append(f"- whole-process peak RSS: "
                         f"{_range([a['zo_steps']['peak_rss'] / c['zo_steps']['peak_rss'] for a in q for c in f])}")
    return "\n".join(lines)


def train_table(pattern: str = "train_{mode}.json") -> str:
    rows = ["| mode | trainable | lr | eps | clip | batch | steps run | acc before | acc after | s/step | total s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ("fp32", "bf16", "int4", "int8"):
        rec = load(pattern.format(mode=mode))
        if not rec:
            continue
        c, r = rec["config"], rec["results"]
        o = c["opt"]
        rows.append(f"| {mode} | {c['trainable']:,} | {o['lr']:g} | {o['eps']:g} | {o.get('clip', '-')} | "
                    f"{c['batch']} | {r['steps_run']} | {100 * r['acc_before']:.2f} | {100 * r['acc_after']:.2f} | "
                    f"{r['s_per_step']:.0f} | {r['total_s']:.0f} |")
    return "\n".join(rows)


def _label(c: dict) -> str:
    opts = [f"feed-forward chunks of {c['mlp_chunk']} tokens" if c.get("mlp_chunk") else "",
            f"micro-batches of {c['micro']}" if c.get("micro") and c["micro"] != c["batch"] else "",
            f"dequantized {c['chunk_rows']} rows at a time" if c["mode"].startswith("int") and c.get("chunk_rows", 1024) != 1024
            else ""]
    return c["mode"] + (" (" + ", ".join(o for o in opts if o) + ")" if any(opts) else "")


def memory_table_v3() -> str:
    """Third measurement: feed-forward chunking and micro-batches, offered to every mode alike."""
    found: dict[str, list] = {}
    for path in sorted((RESULTS / "v3").glob("memory_*_r*.json")):
        rec = json.loads(path.read_text())
        found.setdefault(_label(rec["config"]), []).append(rec["results"])
    if not found:
        return ""
    rows = [("| configuration | run | model tensors (MB) | held after load (MB) | step working set (MB) | "
             "peak anon above library baseline (MB) | peak RSS, whole process (MB) |"), "|---|---|---|---|---|---|---|"]
    for label, runs in found.items():
        for i, r in enumerate(runs, 1):
            lib = r["baseline_with_model_code"]["anon"]
            rows.append(f"| {label} | {i} | {r['model_bytes']['total'] / MB:.1f} | {(r['loaded']['anon'] - lib) / MB:.1f} | "
                        f"{(r['zo_steps']['peak_anon'] - r['loaded']['anon']) / MB:.1f} | "
                        f"{r['peak_anon_above_library_baseline'] / MB:.1f} | {r['zo_steps']['peak_rss'] / MB:.0f} |")
    lines = ["\n".join(rows), ""]
    key = "peak_anon_above_library_baseline"
    for q_label, q in found.items():
        if not q_label.startswith("int4"):
            continue
        for ref_label, f in found.items():
            if ref_label.startswith("bf16"):
                lines.append(f"- {q_label} / {ref_label}: {_range([a[key] / c[key] for a in q for c in f])} "
                             f"(peak anon above the library baseline, every run over every run)")
    return "\n".join(lines)


def train_table_v3(folder: str = "v3") -> str:
    rows = ["| mode | trained | lr | eps | clip | seed | batch | steps | val before | val after | test before | test after | s/step |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted((RESULTS / folder).glob("train_*.json")):
        rec = json.loads(path.read_text())
        c, r = rec["config"], rec["results"]
        o = c["opt"]
        val = [f"{100 * v:.1f}" if v is not None else "-" for v in (r.get("val_before"), r.get("val_after"))]
        what = ("all weights" if c["mode"] in ("bf16", "fp32", "bf16-compute") else
                f"scales + norms (norm lr {c['norm_lr']:g})" if c.get("norm_lr") else "scales")
        what += "".join(f"; {spec}" for spec in c.get("group_lr") or [])
        what += ", one group per step (block-wise)" if c.get("optimizer") == "ZOSGDBlock" else ""
        rows.append(f"| {c['mode']} | {what} ({c['trainable']:,}) | {o['lr']:g} | {o['eps']:g} | {o.get('clip', '-')} | {c['seed']} | {c['batch']} | "
                    f"{r['steps_run']} | {val[0]} | {val[1]} | {100 * r['acc_before']:.2f} | {100 * r['acc_after']:.2f} | "
                    f"{r['s_per_step']:.1f} |")
    return "\n".join(rows)


def _what(c: dict) -> str:
    if c["mode"] in ("bf16", "fp32", "bf16-compute", "int4-bf16"):
        return f"{c['mode']}, all weights, lr {c['opt']['lr']:g}"
    parts = [] if c.get("only_extra") else [f"scales (lr {c['opt']['lr']:g})"]
    if c.get("norm_lr"):
        parts.append(f"norms (lr {c['norm_lr']:g})")
    if c.get("offset_lr"):
        parts.append(f"group offsets (lr {c['offset_lr']:g})")
    if c.get("lora"):
        parts.append(f"LoRA r={c['lora']} on {c['lora_targets']} (lr {c['lora_lr']:g})")
    groups = "".join(f"; {spec}" for spec in c.get("group_lr") or [])
    groups += "".join(f"; frozen: {pat}" for pat in c.get("freeze") or [])
    block = ", one group per step (block-wise)" if c.get("optimizer") == "ZOSGDBlock" else ""
    return f"{c['mode']}, {' + '.join(parts)}{' only' if c.get('only_extra') else ''}{groups}{block}"


def train_table_v6(folder: str = "v6") -> str:
    """Sixth measurement: one row per run (seed, val and test before/after)."""
    rows = ["| configuration | trained entries | seed | val before | val after | test before | test after | s/step |",
            "|---|---:|---|---|---|---|---|---|"]
    for path in sorted((RESULTS / folder).glob("train_*.json")):
        rec = json.loads(path.read_text())
        c, r = rec["config"], rec["results"]
        val = [f"{100 * v:.1f}" if v is not None else "-" for v in (r.get("val_before"), r.get("val_after"))]
        rows.append(f"| {_what(c)} | {c['trainable']:,} | {c['seed']} | {val[0]} | {val[1]} | "
                    f"{100 * r['acc_before']:.2f} | {100 * r['acc_after']:.2f} | {r['s_per_step']:.1f} |")
    return "\n".join(rows)


def memory_table_v6(folder: str = "v6") -> str:
    """Sixth measurement: every mode at the same commit; ratios of each int4 layout to each bf16 run."""
    found: dict[str, list] = {}
    for path in sorted((RESULTS / folder).glob("memory_*.json")):
        rec = json.loads(path.read_text())
        c = rec["config"]
        label = _label(c)
        extra = [f"offsets lr {c['offset_lr']:g}" + (" only" if c.get("only_extra") else " + scales")
                 if c.get("offset_lr") else "", f"held random words capped at {c['hold_bytes']} B"
                 if c.get("hold_bytes") is not None else "",
                 "frozen: " + ", ".join(c["freeze"]) if c.get("freeze") else ""]
        label += "".join(f"; {e}" for e in extra if e)
        if "at-v3-commit" in path.name:  # the third measurement's code, measured today in a worktree
            label += "; the third measurement's code (a2c5050)"
        found.setdefault(label, []).append((rec["git"]["commit"][:7] if isinstance(rec.get("git"), dict) else "?",
                                            rec["results"]))
    rows = [("| configuration | commit | model tensors (MiB) | held after load (MiB) | step working set (MiB) | "
             "peak anon above library baseline (MiB) |"), "|---|---|---|---|---|---|"]
    for label, runs in found.items():
        for commit, r in runs:
            lib = r["baseline_with_model_code"]["anon"]
            rows.append(f"| {label} | {commit} | {r['model_bytes']['total'] / MB:.1f} | {(r['loaded']['anon'] - lib) / MB:.1f} | "
                        f"{(r['zo_steps']['peak_anon'] - r['loaded']['anon']) / MB:.1f} | "
                        f"{r['peak_anon_above_library_baseline'] / MB:.1f} |")
    lines = ["\n".join(rows), ""]
    key = "peak_anon_above_library_baseline"
    for q_label, q in found.items():
        if not q_label.startswith("int4"):
            continue
        for ref_label, f in found.items():
            if ref_label.startswith("bf16"):
                lines.append(f"- {q_label} / {ref_label}: {_range([a[key] / b[key] for _, a in q for _, b in f])}")
    return "\n".join(lines)


def seeds_table(folders: tuple[str, ...] = ("v3", "v4")) -> str:
    """Mean and standard deviation over seeds of every configuration with more than one seed."""
    import statistics

    groups: dict[str, list] = {}
    paths = [path for folder in folders for path in sorted((RESULTS / folder).glob("train_*.json"))]
    for path in paths:
        rec = json.loads(path.read_text())
        c, r = rec["config"], rec["results"]
        key = f"{_what(c)}, batch {c['batch']}, {c['steps']} steps"
        groups.setdefault(key, []).append((c["seed"], r))
    rows = ["| configuration | seeds | test before % | test after % (mean ± std) | gain (points) | val after % |",
            "|---|---|---|---|---|---|"]
    for key, runs in groups.items():
        if len(runs) < 2:
            continue
        runs.sort(key=lambda sr: sr[0])
        after = [100 * r["acc_after"] for _, r in runs]
        before = [100 * r["acc_before"] for _, r in runs]
        val = [100 * r["val_after"] for _, r in runs if r.get("val_after") is not None]
        val_s = f"{statistics.mean(val):.1f}" if val else "-"
        rows.append(f"| {key} | {', '.join(str(s) for s, _ in runs)} | {statistics.mean(before):.2f} | "
                    f"{statistics.mean(after):.2f} ± {statistics.stdev(after):.2f} "
                    f"({', '.join(f'{a:.2f}' for a in after)}) | {statistics.mean(after) - statistics.mean(before):+.2f} | "
                    f"{val_s} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(memory_table())
    print()
    print(memory_table_v2())
    print()
    print(train_table())
    print()
    print(train_table("v2/train_{mode}_b8.json"))
    print()
    print(memory_table_v3())
    print()
    print(train_table_v3())
    print()
    print(train_table_v3("v4"))
    print()
    print(seeds_table())
    print()
    print(train_table_v6())
    print()
    print(seeds_table(("v3", "v4", "v6")))
    print()
    print(memory_table_v6())
