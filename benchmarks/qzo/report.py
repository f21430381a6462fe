"""The QZO README's tables, from the committed records only (reads JSON; runs nothing).

    python benchmarks/qzo/report.py            # print every generated block
    python benchmarks/qzo/report.py --write    # replace them in README.md

Each function takes ``rs``, a :class:`forwardonly.bench.record.RecordSet` of this
folder, so the claims check knows which records every table cites. The sixth
measurement's memory table puts whole-process peak RSS first (over the whole
measurement, loading included, and over the training steps alone); anonymous
memory above a baseline follows, labelled.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB = 2**20


def load(rs, name):
    return rs.get(f"results/{name}")


def memory_table(rs) -> str:
    rows = [("| mode | run | model tensors (MB) | peak anon above baseline (MB) | peak RSS above baseline (MB) | "
             "peak RSS, whole process (MB) |"), "|---|---|---|---|---|---|"]
    base = load(rs, "memory_none.json")
    if base:
        b = base["results"]["baseline"]
        rows.append(f"| baseline: libraries, tokenizer, batch, no model | - | - | - | - | {b['rss'] / MB:.0f} |")
    found: dict[str, list] = {}
    for mode in ("bf16-compute", "bf16", "int4"):
        for run, suffix in ((1, ""), (2, "_r2")):
            rec = load(rs, f"memory_{mode}{suffix}.json")
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


def _v2_runs(rs):
    """{(mode, allocator): [results, ...]} from results/v2 (streamed int4 load, two baselines)."""
    found: dict[tuple, list] = {}
    for rec in rs.glob("results/v2/memory_*_r*.json"):
        mode, alloc, _ = Path(rec["_path"]).stem[len("memory_"):].rsplit("_", 2)
        found.setdefault((mode, alloc), []).append(rec["results"])
    return found


def _range(values) -> str:
    return f"{min(values):.3f}" if max(values) - min(values) < 5e-4 else f"{min(values):.3f} to {max(values):.3f}"


def memory_table_v2(rs) -> str:
    """Second measurement: streamed int4 load, glibc allocator default vs fixed mmap threshold."""
    found = _v2_runs(rs)
    if not found:
        return ""
    rows = [("| mode | allocator | run | model tensors (MB) | load-phase peak anon (MB) | held after load (MB) | "
             "step working set (MB) | peak anon above baseline (MB) | peak anon above library baseline (MB) | "
             "peak RSS, whole process (MB) |"), "|---|---|---|---|---|---|---|---|---|---|"]
    none = load(rs, "v2/memory_none.json")
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


def train_table(rs, pattern: str = "train_{mode}.json") -> str:
    rows = ["| mode | trainable | lr | eps | clip | batch | steps run | acc before | acc after | s/step | total s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ("fp32", "bf16", "int4", "int8"):
        rec = load(rs, pattern.format(mode=mode))
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


def memory_table_v3(rs) -> str:
    """Third measurement: feed-forward chunking and micro-batches, offered to every mode alike."""
    found: dict[str, list] = {}
    for rec in rs.glob("results/v3/memory_*_r*.json"):
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


def train_table_v3(rs, folder: str = "v3") -> str:
    rows = ["| mode | trained | lr | eps | clip | seed | batch | steps | val before | val after | test before | test after | s/step |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rec in rs.glob(f"results/{folder}/train_*.json"):
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


def train_table_v6(rs, folder: str = "v6") -> str:
    """Sixth measurement: one row per run (seed, val and test before/after)."""
    rows = ["| configuration | trained entries | seed | val before | val after | test before | test after | s/step |",
            "|---|---:|---|---|---|---|---|---|"]
    for rec in rs.glob(f"results/{folder}/train_*.json"):
        c, r = rec["config"], rec["results"]
        val = [f"{100 * v:.1f}" if v is not None else "-" for v in (r.get("val_before"), r.get("val_after"))]
        rows.append(f"| {_what(c)} | {c['trainable']:,} | {c['seed']} | {val[0]} | {val[1]} | "
                    f"{100 * r['acc_before']:.2f} | {100 * r['acc_after']:.2f} | {r['s_per_step']:.1f} |")
    return "\n".join(rows)


def _v6_label(rec: dict, path: str) -> str:
    c = rec["config"]
    extra = [f"offsets lr {c['offset_lr']:g}" + (" only" if c.get("only_extra") else " + scales")
             if c.get("offset_lr") else "", f"held random words capped at {c['hold_bytes']} B"
             if c.get("hold_bytes") is not None else "", "frozen: " + ", ".join(c["freeze"]) if c.get("freeze") else ""]
    label = _label(c) + "".join(f"; {e}" for e in extra if e)
    if "at-v3-commit" in path:  # the third measurement's code, measured in a worktree on the same evening
        label += "; the third measurement's code (a2c5050)"
    return label


def whole_run_peak(r: dict) -> float:
    """Whole-process peak RSS over the whole measurement: loading, then the training steps."""
    return max(r["load"]["peak_rss"], r["zo_steps"]["peak_rss"])


def _spread(values, digits: int = 0) -> str:
    """MiB: median [lowest-highest] of byte counts (the median alone when they agree)."""
    from forwardonly.bench.report import spread

    return spread(values, 1 / MB, digits)


def memory_table_v6(rs, folder: str = "v6") -> str:
    """Sixth measurement, one row per configuration, medians over its runs [lowest-highest]: whole-process
    peak RSS over the whole measurement (loading included), then over the training steps alone, then the
    labelled anonymous figures. Ratios of each int4 layout to each bf16 reference, of the medians."""
    found: dict[str, list] = {}
    for rec in rs.glob(f"results/{folder}/memory_*.json"):
        found.setdefault(_v6_label(rec, rec["_path"]), []).append(rec)
    rows = [("| configuration | runs (commits) | **whole-run peak RSS, loading included (MiB)** | peak RSS during the "
             "training steps (MiB) | model tensors (MiB) | held after load, anon above library baseline (MiB) | step "
             "working set, anon (MiB) | peak anon above library baseline, steps (MiB) |"), "|---|---|---|---|---|---|---|---|"]
    for label, recs in found.items():
        res = [r["results"] for r in recs]
        commits = ", ".join(str((r.get("git") or {}).get("commit"))[:7] for r in recs)
        rows.append(f"| {label} | {len(recs)} ({commits}) | **{_spread([whole_run_peak(r) for r in res])}** | "
                    f"{_spread([r['zo_steps']['peak_rss'] for r in res])} | "
                    f"{_spread([r['model_bytes']['total'] for r in res], 1)} | "
                    f"{_spread([r['loaded']['anon'] - r['baseline_with_model_code']['anon'] for r in res], 1)} | "
                    f"{_spread([r['zo_steps']['peak_anon'] - r['loaded']['anon'] for r in res], 1)} | "
                    f"{_spread([r['peak_anon_above_library_baseline'] for r in res], 1)} |")
    lines = ["\n".join(rows), "", ("Ratios int4 / bf16 of the medians: whole-run peak RSS; peak RSS during the steps; "
                                  "(labelled, not the target's figure) peak anonymous memory above the library "
                                  "baseline during the steps:"), ""]

    def med(recs, fn):
        return statistics.median(fn(r["results"]) for r in recs)

    for q_label, q in found.items():
        if not q_label.startswith("int4"):
            continue
        for ref_label, f in found.items():
            if ref_label.startswith("bf16"):
                ratios = [med(q, fn) / med(f, fn) for fn in (whole_run_peak, lambda r: r["zo_steps"]["peak_rss"],
                                                             lambda r: r["peak_anon_above_library_baseline"])]
                lines.append(f"- {q_label} / {ref_label}: **{ratios[0]:.3f}**; {ratios[1]:.3f}; (anon) {ratios[2]:.3f}")
    return "\n".join(lines)


def seeds_table(rs, folders: tuple[str, ...] = ("v3", "v4")) -> str:
    """Mean and standard deviation over seeds of every configuration with more than one seed."""
    groups: dict[str, list] = {}
    for rec in [rec for folder in folders for rec in rs.glob(f"results/{folder}/train_*.json")]:
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


def modes_table(rs) -> str:
    """The layouts of the former run.py's int4 modes, with the model's tensor bytes as the sixth measurement's records give."""
    layouts = [("int4", "`int4` (every earlier measurement)", "int4, group 64, integer zero points (re-rounds the checkpoint)",
                "the same", "memory_int4_scales_r*.json", ""),
               ("int4-q41", "`int4-q41`", "Q4_1 (exact)", "int4, group 64, integer zero points", "memory_int4-q41_r*.json",
                " (fp32 minimums)"),
               ("int4-q41-fmin", "`int4-q41-fmin`", "Q4_1 (exact)", "int4, group 64, fp16 float minimums",
                "memory_int4-q41-fmin_r*.json", ""),
               ("int4-q41-emb8", "`int4-q41-emb8`", "Q4_1 (exact)", "int8 symmetric, group 32 (Q8_0, exact)",
                "memory_int4-q41-emb8_r*.json", "")]
    rows = ["| mode | block linears | tied embedding/head | model tensors (MiB) |", "|---|---|---|---:|"]
    for _, name, blocks_, emb, pattern, note in layouts:
        recs = rs.glob(f"results/v6/{pattern}")
        rows.append(f"| {name} | {blocks_} | {emb} | "
                    f"{_spread([r['results']['model_bytes']['total'] for r in recs], 1)}{note} |")
    return "\n".join(rows)


VARIANTS = [  # results/v4 and v5 file -> how the README names the variant (seed 0, 100 steps of 8 unless marked)
    ("v4/train_int4_lr2e-4_norm2e-4_s0.json", "scales lr 2e-4 + all 61 norms lr 2e-4 (`--norm-lr`)"),
    ("v4/train_int4_lr2e-4_norm1e-4_s0.json", "scales lr 2e-4 + norms lr 1e-4"),
    ("v4/train_int4_lr3e-4_norm5e-5_s0.json", "scales lr 3e-4 + norms lr 5e-5"),
    ("v4/train_int4_lr3e-4_norm2e-5_s0.json", "scales lr 3e-4 + norms lr 2e-5"),
    ("v4/train_int4_lr3e-4_emb3e-3_s0.json", "scales lr 3e-4, the embedding/head scales at 3e-3 (`--group-lr`)"),
    ("v4/train_int4_lr3e-4_finalnorm1e-4_s0.json", "scales lr 3e-4 + the final norm only, lr 1e-4"),
    ("v4/train_int4_block_lr3e-4_norm2e-4_s0.json",
     "scales and norms perturbed on alternate steps (`--optimizer block`), norms lr 2e-4"),
    ("v4/train_int4_block_lr3e-4_norm4e-4_s0.json", "the same, norms lr 4e-4"),
    ("v4/train_int4_lr3e-4_300steps_s0.json", "plain recipe, 300 steps (bf16 at 300 steps: {bf16_300})"),
    ("v4/train_int4_block_lr3e-4_bias0.1_s0.json", ("scales lr 3e-4 alternating with a zero-initialised fp32 logit "
                                                     "bias on the head (`--head-bias --optimizer block`), bias lr 0.1")),
    ("v4/train_int4_block_lr3e-4_bias0.3_s0.json", "the same, bias lr 0.3"),
    ("v5/train_int4_delta1e-4_s0.json", ("scales lr 3e-4 + a zero-initialised fp32 delta on the two label words' "
                                         "output rows (`--label-delta`, 1,152 floats), delta lr 1e-4")),
    ("v5/train_int4_delta3e-4_s0.json", "the same, delta lr 3e-4"),
    ("v5/train_int4_delta1e-3_s0.json", "the same, delta lr 1e-3"),
    ("v5/train_int4_block_delta1e-4_s0.json",
     "scales and the label-row delta perturbed on alternate steps (`--optimizer block --label-delta`), delta lr 1e-4"),
    ("v5/train_int4_block_delta1e-3_s0.json", "the same, delta lr 1e-3")]


def variants_table(rs) -> str:
    """Every int4 variant of the fourth and fifth measurements: validation and test accuracy after training."""
    b = load(rs, "v4/train_bf16_lr1e-5_300steps_s0.json")["results"]
    plain = load(rs, "v3/train_int4_lr3e-4_s0.json")["results"]
    rows = [(f"Every int4 variant tried (seed 0, 100 steps of 8 unless marked; the plain recipe scores val "
             f"{100 * plain['val_after']:.1f}, test {100 * plain['acc_after']:.2f}):"), "",
            "| int4 variant | val after % | test after % |", "|---|---:|---:|"]
    for name, what in VARIANTS:
        r = load(rs, name)["results"]
        what = what.format(bf16_300=f"val {100 * b['val_after']:.1f}, test {100 * b['acc_after']:.2f}")
        rows.append(f"| {what} | {100 * r['val_after']:.1f} | {100 * r['acc_after']:.2f} |")
    return "\n".join(rows)


def gradients_table(rs) -> str:
    """The squared gradient norm of the int4 model by kind of tensor (``gradients.py``, one backward pass)."""
    r = load(rs, "v4/gradients_int4.json")["results"]
    kinds = {k["kind"]: k for k in r["kinds"]}
    groups = [("RMSNorm weights (`post_attention_layernorm` + `input_layernorm`, 60 tensors)",
               ["post_attention_layernorm.weight", "input_layernorm.weight"]),
              ("embedding / tied head scales", ["model.embed_tokens.scales"]),
              ("every other scale (q, k, v, o, gate, up, down of 30 layers)",
               [k for k in kinds if k.endswith("_proj.scales")]),
              ("final norm", ["model.norm.weight"])]
    rows = ["| tensors | entries | share of the squared gradient norm |", "|---|---:|---:|"]
    for label, ks in groups:
        rows.append(f"| {label} | {sum(kinds[k]['entries'] for k in ks):,} | {sum(kinds[k]['share'] for k in ks):.3f} |")
    return "\n".join(rows)


def peak_parts_table(rs) -> str:
    """Where the second measurement's int4 peak goes (fixed mmap threshold, above the library baseline)."""
    q = _v2_runs(rs)[("int4", "mmap128k")]
    lib = [r["baseline_with_model_code"]["anon"] for r in q]
    model = [r["model_bytes"]["total"] / MB for r in q]
    held = [(r["loaded"]["anon"] - b) / MB - m for r, b, m in zip(q, lib, model)]
    work = [(r["zo_steps"]["peak_anon"] - r["loaded"]["anon"]) / MB for r in q]

    def rng(v):
        lo, hi = f"{min(v):.1f}", f"{max(v):.1f}"
        return lo if lo == hi else f"{lo}-{hi}"

    return "\n".join([
        "| part | MB |", "|---|---|",
        f"| int4 codes (67.2 M bytes), fp32 log-scales (2.1 M), uint8 zero points (2.1 M) | {rng(model)} |",
        f"| other memory held after loading (norms, rotary tables, module objects, allocator slack) | {rng(held)} |",
        ("| step working set: fp32 activations (an MLP at batch 16 x 65 tokens holds three 6.4 MB intermediates), "
         "one layer's dequantized weight (<= 3.5 MB), the perturbed copy of one layer's scales, direction scratch "
         f"(4 MB), allocator and library slack | {rng(work)} |")])


def suite_table(rs) -> str:
    """The suite's experiments run through ``forwardonly train`` (``benchmarks/zo_bench/run.py --suite qzo``)."""
    from forwardonly.bench.report import experiments_table

    return experiments_table(rs.glob("results/runs/*.json"), "bf16-zo")


def blocks(rs) -> dict[str, str]:
    """README.md's generated blocks, newest measurement first."""
    return {"train-path": suite_table(rs), "v6-modes": modes_table(rs), "v6-runs": train_table_v6(rs), "v6-seeds": seeds_table(rs, ("v3", "v4", "v6")),
            "v6-memory": memory_table_v6(rs), "v4-seeds": seeds_table(rs), "v4-variants": variants_table(rs),
            "v4-gradients": gradients_table(rs), "v3-memory": memory_table_v3(rs), "v3-train": train_table_v3(rs),
            "v2-memory": memory_table_v2(rs), "v2-peak-parts": peak_parts_table(rs),
            "v2-train": train_table(rs, "v2/train_{mode}_b8.json"), "v1-memory": memory_table(rs),
            "v1-train": train_table(rs)}


if __name__ == "__main__":
    from forwardonly.bench.blocks import suite_main

    sys.exit(suite_main(HERE, blocks))
