"""Every number the READMEs state traces to a committed record.

    python benchmarks/claims.py            # check; exit 1 listing what does not trace
    python benchmarks/claims.py --dirty    # also list every cited record that is dirty or unpinned

What is checked:

1. **Generated blocks.** Every ``<!-- generated:NAME -->`` block of a suite's README is
   regenerated from the committed records by that suite's ``report.py`` (``blocks(rs)``)
   and must equal the committed text. A block nothing generates, or a generated one
   missing from the README, fails too.
2. **Tables outside blocks.** Every Markdown table of ``benchmarks/*/README.md`` outside a
   generated block must be listed in ``claims_allow.json``: ``descriptive_tables`` (no
   measured number: layouts, formulas) or ``untraced_tables`` (a measured table with no
   record, each with its reason; reported, allowed until the lead empties the list).
3. **The top-level README's result sentences.** Every number with a unit of measure
   (``%``, ``x``, ``MiB``/``GiB``/``MB``/``GB``, ``s``, ``min``, ``points``) outside code
   must lie in a sentence of :data:`PROSE` whose values, computed here from committed
   records, appear in it as written; or in ``exempt_sentences`` (targets, specs); or in
   ``untraced_sentences`` (results with no record yet, each with its reason).
4. **Dirty records.** A record that a block or a sentence cites must pin its code: a
   commit, and the diff when the tree differed (``git.dirty`` true with ``git.diff``). A
   cited record that is dirty without a diff (or has no commit) fails unless
   ``claims_allow.json``'s ``dirty_records`` lists it with a reason: the legacy records,
   to be re-run from clean commits; the list is to be emptied, never grown.

Untraced numbers and new dirty records fail the check (exit 1); the allow-listed ones
are printed as warnings. Nothing is re-run or rewritten: the suites' ``report.py --write``
regenerates blocks.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("step_overhead", "zo_bench", "offload", "qzo", "distributed", "local_learning", "convergence", "zeroqat", "demo")
NUMBER = re.compile(r"(?<![\w.\-])[+-]?\d[\d,]*(?:\.\d+)?\s?(?:%|x\b|MiB\b|GiB\b|MB\b|GB\b|min\b|s\b|points\b)")
MiB = 2**20


@dataclass
class Prose:
    """A sentence of the top-level README and the values in it, each computed from committed records.

    ``values`` maps the text as the README writes it (``"0.70x"``) to a function of the suites' record sets
    that must return exactly that text."""

    text: str
    values: dict[str, Callable]


def _qzo_whole_run(rs, pattern):
    return statistics.median(max(r["results"]["load"]["peak_rss"], r["results"]["zo_steps"]["peak_rss"])
                             for r in rs.glob(pattern))


def _qzo_steps(rs, pattern):
    return statistics.median(r["results"]["zo_steps"]["peak_rss"] for r in rs.glob(pattern))


def _suite_rss(rs, experiment):
    """Median whole-run peak RSS of a suite experiment's records (``results/runs/``, the shared runner's)."""
    return statistics.median(r["results"]["memory"]["peak_rss"] for r in rs.glob(f"results/runs/{experiment}.seed*.json")
                             if r.get("status") == "ok")


QZO_INT4 = "results/v6/memory_int4-q41-emb8_frozenemb_r*.json"  # the configuration that met the accuracy target
QZO_BF16 = "results/v6/memory_bf16-compute_r*.json"
CHUNKED = "results/v3/memory_int4_mlp128_micro4_r*.json"
def _demo(rs, key, fmt):
    """The median over the shipped demo recipe's records of ``key(results)``, formatted."""
    runs = load_suite(ROOT / "benchmarks", "demo").shipped(rs)
    return fmt.format(statistics.median(key(r["results"]) for r in runs)) if runs else "no record"


def _demo_range(rs, key, fmt="{:.0f}", pick=None):
    """``[min-max]`` over the shipped demo recipe's records of ``key(results)``; with ``pick`` (0 or -1) the lowest
    or highest alone, formatted."""
    vals = sorted(key(r["results"]) for r in load_suite(ROOT / "benchmarks", "demo").shipped(rs))
    if not vals:
        return "no record"
    if pick is not None:
        return fmt.format(vals[pick])
    return f"[{fmt.format(vals[0])}-{fmt.format(vals[-1])}]"


def _demo_within(rs, seconds):
    """How many of the shipped demo recipe's records ran in at most ``seconds`` in all, in words."""
    runs = load_suite(ROOT / "benchmarks", "demo").shipped(rs)
    words = {1: "one", 2: "two", 3: "three", 4: "four"}
    n = sum(r["results"]["total_time_s"] <= seconds for r in runs)
    return f"{words.get(n, n)} record of {words.get(len(runs), len(runs))}"


def _final_norm(rs, key):
    recs = rs.glob("results/final_norm.*.json")
    return f"{100 * key(recs[-1]['results']):.2f} %" if recs else "no record"


def _probe_demo(rs, run):
    """Validation accuracy of a ``D/sentiment-probe/demo`` run (seed 0) at its last evaluation."""
    recs = rs.glob(f"results/D/sentiment-probe/demo/{run}.seed0.*.json")
    if not recs:
        return "no record"
    evals = [e for e in recs[-1]["results"]["evals"] if "accuracy" in e]
    return f"{100 * evals[-1]['accuracy']:.1f} %"


def _l28_head(rs):
    """Validation accuracy of the block-28 head alone: step 0 of the ``D/sentiment-probe/demo/l28`` runs (one
    figure for all, or a mismatch)."""
    seen = {e["accuracy"] for r in rs.glob("results/D/sentiment-probe/demo/l28/*.seed0.*.json")
            for e in r["results"]["evals"][:1]}
    return f"{100 * seen.pop():.1f} %" if len(seen) == 1 else f"mixed {sorted(seen)}"


def _demo_l28(rs, key, fmt):
    """``key(results)`` of the ``forwardonly demo`` record of the block-28 head with no ZO step (its one run)."""
    runs = [r for r in rs.glob("results/demo.*.json")
            if r["config"]["model"].get("layers") == 28 and r["config"]["steps"] == 0]
    return fmt.format(key(runs[0]["results"])) if len(runs) == 1 else f"{len(runs)} records"


def _conv_forwards(rs):
    """The forward passes the ``D/sentiment-probe/demo`` ZO runs spent (one figure for both, or a mismatch)."""
    spent = {r["results"]["forwards"] for r in rs.glob("results/D/sentiment-probe/demo/mezo-*.seed0.*.json")}
    return spent.pop() if len(spent) == 1 else f"mixed {sorted(spent)}"


PROSE = [
    Prose("With the shipped config (ZO-SGD on the 35k normalisation weights, lr 2e-4, 200 steps of 16 sentences), "
          "the recorded runs raise held-out accuracy from 78.25 % to 85.50 % (+7.25 points) in 838 s [440-1236], "
          "of which 731 s training [390-1073] (model cached), peak RSS 1132 MiB: the median of 2 recorded runs",
          {"78.25 %": lambda s: _demo(s["demo"], lambda r: 100 * r["test_before"]["accuracy"], "{:.2f} %"),
           "85.50 %": lambda s: _demo(s["demo"], lambda r: 100 * r["test_after"]["accuracy"], "{:.2f} %"),
           "+7.25 points": lambda s: _demo(s["demo"], lambda r: 100 * (r["test_after"]["accuracy"]
                                                                        - r["test_before"]["accuracy"]), "{:+.2f} points"),
           "838 s": lambda s: _demo(s["demo"], lambda r: r["total_time_s"], "{:.0f} s"),
           "[440-1236]": lambda s: _demo_range(s["demo"], lambda r: r["total_time_s"]),
           "731 s": lambda s: _demo(s["demo"], lambda r: r["train_time_s"], "{:.0f} s"),
           "[390-1073]": lambda s: _demo_range(s["demo"], lambda r: r["train_time_s"]),
           "1132 MiB": lambda s: _demo(s["demo"], lambda r: r["peak_rss_bytes"] / MiB, "{:.0f} MiB"),
           "2 recorded runs": lambda s: f"{len(load_suite(ROOT / 'benchmarks', 'demo').shipped(s['demo']))} recorded runs"}),
    Prose("a forward of SmolLM2-135M on 16 sentences took 0.97 s in the faster run and 2.68 s in the slower",
          {"0.97 s": lambda s: _demo_range(s["demo"], lambda r: r["train_time_s"] / r["forwards"], "{:.2f} s", 0),
           "2.68 s": lambda s: _demo_range(s["demo"], lambda r: r["train_time_s"] / r["forwards"], "{:.2f} s", -1)}),
    Prose("neither is the 10-minute one on the median (one record of two meets it)",
          {"one record of two": lambda s: _demo_within(s["demo"], 600)}),
    Prose("with its 576 weights, L-BFGS (backpropagation) reaches 81.75 % on test and the best ZO-SGD recipe chosen "
          "on validation 80.25 %",
          {"81.75 %": lambda s: _final_norm(s["demo"], lambda r: r["ceiling_lbfgs"]["test"]),
           "80.25 %": lambda s: _final_norm(s["demo"], lambda r: r["chosen_on_validation"]["test_seed0"])}),
    Prose("A classifier head fitted by a linear probe on the last layer reaches 86.5 % on validation before any step, "
          "but ZO-SGD on the norms from it ends at 81.5 % (lr 2e-4) and 87.0 % (lr 5e-5) after 120 forwards",
          {"86.5 %": lambda s: _probe_demo(s["convergence"], "lp"),
           "81.5 %": lambda s: _probe_demo(s["convergence"], "mezo-lr2e-4"),
           "87.0 %": lambda s: _probe_demo(s["convergence"], "mezo-lr5e-5"),
           "120 forwards": lambda s: f"{_conv_forwards(s['convergence'])} forwards"}),
    Prose("A head on block 28 of the model cut there (`model.layers`) scores 89.5 % on validation, the best of 31 "
          "blocks x 6 L2 weights, and every ZO-SGD run from it scored lower; run once on test as a config with no ZO "
          "step, it reached 85.25 % in 131 s",
          {"89.5 %": lambda s: _l28_head(s["convergence"]),
           "85.25 %": lambda s: _demo_l28(s["demo"], lambda r: 100 * r["test_after"]["accuracy"], "{:.2f} %"),
           "131 s": lambda s: _demo_l28(s["demo"], lambda r: r["total_time_s"], "{:.0f} s")}),
    Prose("int4 QZO's whole-process peak RSS during training steps falls from 529 to 508 MiB (benchmarks/qzo), and "
          "the quantized configuration that matches bf16 ZO's accuracy peaks at 0.70x bf16 ZO during the steps, 0.98x "
          "over the whole run, loading included",
          {"529 to": lambda s: f"{_qzo_steps(s['qzo'], 'results/v3/memory_int4_r1.json') / MiB:.0f} to",
           "508 MiB": lambda s: f"{_qzo_steps(s['qzo'], CHUNKED) / MiB:.0f} MiB",
           "0.70x": lambda s: f"{_qzo_steps(s['qzo'], QZO_INT4) / _qzo_steps(s['qzo'], QZO_BF16):.2f}x",
           "0.98x": lambda s: f"{_qzo_whole_run(s['qzo'], QZO_INT4) / _qzo_whole_run(s['qzo'], QZO_BF16):.2f}x"}),
    Prose("In `forwardonly train` (`model.quant`), the suite's best quantized configuration peaks at 0.88x bf16 ZO's "
          "whole-process RSS over the whole run, loading included (benchmarks/qzo, 4-step memory runs).",
          {"0.88x": lambda s: f"{_suite_rss(s['qzo'], 'int4-q41-emb8-frozenemb') / _suite_rss(s['qzo'], 'bf16-zo'):.2f}x"}),
]


@dataclass
class Findings:
    """What the check found in the checkout at ``root``."""

    root: Path
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cited: set[str] = field(default_factory=set)


def load_suite(bench: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"claims_{name}_report", bench / name / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _prose(text: str) -> str:
    """The text outside fenced code, whitespace folded (so a sentence is found however it wraps)."""
    lines, code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            code = not code
        elif not code:
            lines.append(line)
    return " ".join(" ".join(lines).split())


def check_blocks(sets: dict, found: Findings) -> None:
    from forwardonly.bench.blocks import stale_blocks

    bench = found.root / "benchmarks"
    for name in SUITES:
        made = load_suite(bench, name).blocks(sets[name])
        found.failures += [p.replace(str(found.root) + "/", "")
                           for p in stale_blocks(bench / name / "README.md", made)]


def check_tables(allow: dict, found: Findings) -> None:
    from forwardonly.bench.blocks import spans

    for readme in sorted((found.root / "benchmarks").glob("*/README.md")):
        text = readme.read_text()
        inside = list(spans(text, str(readme)).values())
        rel = readme.relative_to(found.root).as_posix()
        offset, prev = 0, ""
        for n, line in enumerate(text.splitlines(keepends=True), 1):
            starts = line.lstrip().startswith("|") and not prev.lstrip().startswith("|")  # tables in lists too
            if starts and not any(a <= offset < b for a, b in inside):
                header = line.strip()
                key = f"{rel}: {header}"
                if key in allow["descriptive_tables"]:
                    pass
                elif key in allow["untraced_tables"]:
                    found.warnings.append(f"{rel}:{n}: table with no record (allowed: "
                                          f"{allow['untraced_tables'][key]})")
                else:
                    found.failures.append(f"{rel}:{n}: table outside a generated block, not in claims_allow.json: "
                                          f"{header[:100]}")
            offset += len(line)
            prev = line


def check_prose(sets: dict, allow: dict, found: Findings) -> None:
    text = _prose((found.root / "README.md").read_text())
    spans: list[tuple[int, int, str]] = []  # (start, end, why) of every sentence the check knows

    def locate(sentence: str, why: str) -> bool:
        start = text.find(" ".join(sentence.split()))
        if start >= 0:
            spans.append((start, start + len(" ".join(sentence.split())), why))
        return start >= 0

    for claim in PROSE:
        if not locate(claim.text, "traced"):
            found.failures.append(f"README.md: a traced sentence is missing or reworded: {claim.text[:90]}...")
            continue
        for shown, value in claim.values.items():
            got = value(sets)
            if got != shown or shown not in claim.text:
                found.failures.append(f"README.md: {shown!r} in {claim.text[:60]!r}... is {got!r} in the records")
    for sentence, reason in allow["exempt_sentences"].items():
        if not locate(sentence, "exempt"):
            found.warnings.append(f"claims_allow.json: exempt sentence not in README.md: {sentence[:60]}...")
    for sentence, reason in allow["untraced_sentences"].items():
        if not locate(sentence, f"untraced: {reason}"):
            found.warnings.append(f"claims_allow.json: untraced sentence not in README.md: {sentence[:60]}...")
    code = [(m.start(), m.end()) for m in re.finditer(r"`[^`]*`", text)]
    for m in NUMBER.finditer(text):
        if any(a <= m.start() < b for a, b in code):
            continue
        why = next((w for a, b, w in spans if a <= m.start() < b), None)
        context = text[max(0, m.start() - 50): m.end() + 20]
        if why is None:
            found.failures.append(f"README.md: {m.group(0).strip()!r} traces to no record: ...{context}...")
        elif why.startswith("untraced"):
            found.warnings.append(f"README.md: {m.group(0).strip()!r} has no record yet ({why[10:]})")


def check_dirty(sets: dict, allow: dict, found: Findings, list_all: bool) -> None:
    from forwardonly.bench.record import pins_code

    known = {p: entry["reason"] for entry in allow["dirty_records"] for p in entry["records"]}
    cited = sorted({Path(p).resolve().relative_to(found.root.resolve()).as_posix()
                    for rs in sets.values() for p in rs.used})
    found.cited = set(cited)
    legacy = []
    for rel in cited:
        record = json.loads((found.root / rel).read_text())
        if pins_code(record):
            continue
        git = record.get("git") or {}
        if rel in known:
            legacy.append(rel)
            if list_all:
                found.warnings.append(f"{rel}: dirty without a diff (allowed: {known[rel]})")
        else:
            found.failures.append(f"{rel}: cited by a README but does not pin its code (git {git.get('commit')}, "
                                  f"dirty {git.get('dirty')}, no diff); re-run it from a clean commit")
    stale = sorted(set(known) - set(cited))
    if legacy and not list_all:
        found.warnings.append(f"{len(legacy)} cited records are dirty without a diff (the allowed legacy list; "
                              "--dirty lists them)")
    if stale:
        found.warnings.append(f"{len(stale)} records in claims_allow.json's dirty list are no longer cited: "
                              + ", ".join(stale[:5]) + (" ..." if len(stale) > 5 else ""))


def run(root: Path = ROOT, list_dirty: bool = False) -> Findings:
    """Every check on the checkout at ``root``."""
    from forwardonly.bench.record import RecordSet

    allow = json.loads((root / "benchmarks" / "claims_allow.json").read_text())
    sets = {name: RecordSet(root / "benchmarks" / name) for name in SUITES}
    found = Findings(Path(root))
    check_blocks(sets, found)
    check_tables(allow, found)
    check_prose(sets, allow, found)
    check_dirty(sets, allow, found, list_dirty)
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirty", action="store_true", help="list every cited record that is dirty without a diff")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    found = run(list_dirty=args.dirty)
    for w in found.warnings:
        print(f"warning: {w}")
    for f in found.failures:
        print(f"UNTRACED: {f}")
    print(f"claims: {len(found.cited)} records cited, {len(found.failures)} failures, {len(found.warnings)} warnings")
    return 1 if found.failures else 0


if __name__ == "__main__":
    sys.exit(main())
