"""Choose each method's learning rate on validation from a cell's sweep, and write its final experiment.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/convergence/choose.py E/k16            # show the choice, write nothing
    PYTHONPATH=src python benchmarks/convergence/choose.py E/k16 --write    # write E/k16/<method>/overrides.yaml

A cell's sweep is ``experiments/<cell>/sweep/<method>-lr<value>/`` (validation only, no test). For each
method the sweep run with the highest median final validation accuracy over its seeds wins (ties: the
lower median final training loss, then the smaller learning rate); a run that diverged (the
report's ``diverged_run``: a non-finite training loss, or one risen past 10x its first logged row)
never wins. ``--write`` copies the winner's ``overrides.yaml`` to ``<cell>/<method>/``
under a header that states the choice and the records it was read from (and, when the winner is the
smallest or largest learning rate tried, says so: the grid may not hold the best); a method whose final
experiment already has records is left alone (its runs were made with the file as it is), and so is a
method whose sweep still has a run without a record (the choice would not be final).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

from forwardonly.bench.convergence import diverged_run

HERE = Path(__file__).resolve().parent
EXPERIMENTS, RESULTS = HERE / "experiments", HERE / "results"
SWEEP_NAME = re.compile(r"^(?P<method>.+)-lr(?P<lr>[0-9.eE+-]+)$")


def sweep_records(cell: str, results: Path = RESULTS) -> dict[str, dict[str, list[dict]]]:
    """``{method: {run name: [ok records]}}`` of ``cell``'s sweep."""
    out: dict[str, dict[str, list[dict]]] = {}
    for path in sorted((results / cell / "sweep").glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("status") != "ok":
            continue
        run = Path(rec["experiment"]).name
        m = SWEEP_NAME.match(run)
        if m:
            rec["_path"] = str(path.relative_to(results.parent))  # results/<cell>/sweep/<file> by default
            out.setdefault(m["method"], {}).setdefault(run, []).append(rec)
    return out


def score(recs: list[dict]) -> tuple[float, float, float]:
    """(median final validation accuracy, -median final training loss, -lr): higher is better."""
    finals, losses = [], []
    for r in recs:
        evals = r["results"].get("evals") or []
        hist = r["results"].get("history") or []
        if not evals or diverged_run(r):  # the report's rule: a non-finite loss, or one risen past 10x its first
            return (-1.0, -math.inf, 0.0)
        finals.append(evals[-1]["accuracy"])
        losses.append(hist[-1]["loss"] if hist else math.inf)
    return statistics.median(finals), -statistics.median(losses), -float(recs[0]["config"]["optim"]["lr"])


def _pct(acc: float) -> str:
    """A score's accuracy as a percentage, or "diverged" (:func:`score` ranks a diverged run at -1)."""
    return f"{100 * acc:.1f} %" if acc >= 0 else "diverged"


def sweep_experiments(cell: str, experiments: Path = EXPERIMENTS) -> dict[str, dict[str, float]]:
    """``{method: {run name: lr}}`` of the sweep folders ``cell`` defines (run or not)."""
    out: dict[str, dict[str, float]] = {}
    for path in sorted((experiments / cell / "sweep").glob("*/overrides.yaml")):
        m = SWEEP_NAME.match(path.parent.name)
        if m:
            out.setdefault(m["method"], {})[path.parent.name] = float(m["lr"])
    return out


def choose(cell: str, results: Path = RESULTS, experiments: Path = EXPERIMENTS) -> dict[str, dict]:
    """Per method: the winning run, its score, the ranked table, the records read, the sweep runs that
    have no record yet (``missing``: the choice is not final) and whether the winner sits at the edge of
    the grid (``edge``: "smallest" or "largest" learning rate tried, else None)."""
    out, defined = {}, sweep_experiments(cell, experiments)
    for method, runs in sweep_records(cell, results).items():
        ranked = sorted(runs, key=lambda run: score(runs[run]), reverse=True)
        lrs = {run: float(runs[run][0]["config"]["optim"]["lr"]) for run in runs} | defined.get(method, {})
        best = lrs[ranked[0]]
        edge = None
        if len(set(lrs.values())) > 1:
            edge = "smallest" if best == min(lrs.values()) else "largest" if best == max(lrs.values()) else None
        out[method] = {"run": ranked[0], "score": score(runs[ranked[0]]),
                       "table": [(run, runs[run][0]["config"]["optim"]["lr"], score(runs[run])[0], len(runs[run]))
                                 for run in ranked],
                       "records": sorted(r["_path"] for run in runs.values() for r in run),
                       "missing": sorted(run for run in defined.get(method, {}) if run not in runs), "edge": edge}
    return out


def write_final(cell: str, method: str, choice: dict, experiments: Path = EXPERIMENTS,
                results: Path = RESULTS) -> Path | None:
    dest = experiments / cell / method / "overrides.yaml"
    if list((results / cell).glob(f"{method}.seed*.json")):
        print(f"{dest}: left as it is, its runs have records", file=sys.stderr)
        return None
    if choice.get("missing"):
        print(f"{dest}: not written, the sweep is incomplete (no record yet: {', '.join(choice['missing'])})",
              file=sys.stderr)
        return None
    src = experiments / cell / "sweep" / choice["run"] / "overrides.yaml"
    body = [line for line in src.read_text().splitlines() if not line.startswith("#")]
    spacing = [line.split(":", 1)[1].split("#")[0].strip() for line in body if line.startswith("eval_every:")]
    if spacing:  # the final's test curve at the sweep's validation spacing (a final run does not validate)
        body.append(f"test_every: {spacing[-1]}")
    table = "; ".join(f"lr {lr:g}: {_pct(acc)}" + (f" ({n} seeds)" if n > 1 else "")
                      for _, lr, acc, n in sorted(choice["table"], key=lambda t: t[1]))
    head = [f"# PYTHONPATH=src python benchmarks/convergence/run.py --only '{cell}/{method}' --seeds 0,1,2",
            f"# Written by choose.py: the learning rate of sweep/{choice['run']}, the best median final",
            f"# validation accuracy of the sweep ({table}).",
            "# Sweep records: " + ", ".join(Path(p).name for p in choice["records"])]
    if choice.get("edge"):
        head.append(f"# The winner is the {choice['edge']} learning rate the sweep tried: "
                    "the grid may not hold the best.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(head + body) + "\n")
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cell", help="e.g. E/k16")
    ap.add_argument("--write", action="store_true", help="write each method's final overrides.yaml")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    if not (EXPERIMENTS / args.cell).is_dir():
        print(f"choose.py: {args.cell}: no such cell under {EXPERIMENTS}", file=sys.stderr)
        return 2
    chosen = choose(args.cell, Path(args.results))
    if not chosen:
        print(f"choose.py: no sweep records for {args.cell} under {args.results}", file=sys.stderr)
        return 2
    for method, runs in sorted(sweep_experiments(args.cell).items()):
        if method not in chosen:
            print(f"{method}: no sweep record yet ({', '.join(runs)})")
    for method, c in sorted(chosen.items()):
        rows = ", ".join(f"{lr:g} -> {_pct(acc)}" for _, lr, acc, _ in c["table"])
        notes = [f"incomplete, no record yet: {', '.join(c['missing'])}"] if c["missing"] else []
        if c["edge"]:
            notes.append(f"the {c['edge']} lr tried")
        print(f"{method}: {c['run']} ({rows})" + (f" [{'; '.join(notes)}]" if notes else ""))
        if args.write:
            path = write_final(args.cell, method, c, results=Path(args.results))
            if path:
                print(f"  wrote {path.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
