"""Run the local-learning benchmark: every experiment file x every seed, one thread per run.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/local_learning/run.py                 # all experiments, seeds 0,1,2
    PYTHONPATH=src python benchmarks/local_learning/run.py --only mf,bp --seeds 0 --jobs 2
    PYTHONPATH=src python benchmarks/local_learning/run.py --only ff-hard --jobs 1 --wait-for /tmp/fo-bench.lock
    # screen one seed, then complete the round without re-running it
    PYTHONPATH=src python benchmarks/local_learning/run.py --only ff-hard-1000 --seeds 0 --jobs 1
    PYTHONPATH=src python benchmarks/local_learning/run.py --only ff-hard-1000 --seeds 0,1,2 --jobs 1 --keep

Each experiment is a YAML file in ``experiments/`` holding a ``LocalConfig``
(the same keys as ``forwardonly local train``). Each invocation writes, per
experiment, a new record ``results/<experiment>.<UTC time>.json`` (never over an
old one) with the runs it made and the mean and sample standard deviation of
their test accuracy. With ``--keep`` the seeds that already have a run in a record
of the experiment with the same config are not run again; the new record holds
only the new runs, and its ``kept`` entry names the records the others are in.
Analysis is a separate step (``report.py``), which pools the runs of every
record of an experiment and never re-runs anything.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run_one(job):
    import torch

    from forwardonly.config import load_config
    from forwardonly.local.config import LocalConfig
    from forwardonly.local.trainer import train

    path, seed, wait_for = job
    while wait_for and Path(wait_for).exists():  # someone else is timing: start after them
        time.sleep(15)
    torch.set_num_threads(1)
    cfg = load_config(LocalConfig, path, [f"seed={seed}", "threads=1"])
    t0 = time.perf_counter()
    name = Path(path).stem
    summary = train(cfg, log=lambda line: print(f"{name} seed={seed} {line}", flush=True))
    summary.pop("model")
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["seed"] = seed
    print(f"{Path(path).stem} seed={seed} test_acc={summary['test_acc']:.4f} "
          f"epochs={summary['epochs_run']} wall={summary['wall_seconds']:.0f}s", flush=True)
    return Path(path).stem, summary


def aggregate(runs: list[dict]) -> dict:
    out = {}
    keys = [k for k in runs[0] if k.startswith("test_acc")] + ["seconds_per_epoch", "time_to_target", "epochs_run"]
    for k in keys:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            out[k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                      "n": len(vals), "values": vals}
    return out


def main(argv=None) -> int:
    from forwardonly.bench.record import make_record, new_record_path, write_record
    from forwardonly.config import load_config, to_dict
    from forwardonly.local.config import LocalConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated experiment names (default: all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--wait-for", metavar="PATH", help="before each run, wait while PATH exists (a shared lock file)")
    ap.add_argument("--keep", action="store_true",
                    help="skip the seeds that a record of the experiment (same config) already has")
    args = ap.parse_args(argv)

    files = sorted((HERE / "experiments").glob("*.yaml"))
    if args.only:
        wanted = set(args.only.split(","))
        files = [f for f in files if f.stem in wanted]
        if missing := wanted - {f.stem for f in files}:
            sys.exit(f"unknown experiments: {sorted(missing)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    # slowest first so the pool ends together
    order = {"ff": 0, "bp": 1, "mf": 2, "fg-local": 3, "mf-1000-e25": 4}
    files.sort(key=lambda f: order.get(f.stem, 9))
    by_exp: dict[str, list[dict]] = {f.stem: [] for f in files}
    kept: dict[str, list] = {}
    if args.keep:
        for f in files:
            if (old := kept_runs(Path(args.results), f.stem, to_dict(load_config(LocalConfig, f)), seeds)):
                kept[f.stem] = old
    done = {name: {s for src in kept.get(name, []) for s in src["seeds"]} for name in by_exp}
    jobs = [(str(f), s, args.wait_for) for f in files for s in seeds if s not in done[f.stem]]
    ctx = mp.get_context("spawn")

    def write(name):
        runs = sorted(by_exp[name], key=lambda r: r["seed"])
        cfg = to_dict(load_config(LocalConfig, HERE / "experiments" / f"{name}.yaml"))
        extra = {"kept": kept[name]} if name in kept else {}
        rec = make_record(f"local_learning/{name}", cfg, {"aggregate": aggregate(runs), "runs": runs},
                          seeds=seeds, experiment_file=f"experiments/{name}.yaml", **extra)
        write_record(new_record_path(args.results, name), rec)

    for name in by_exp:
        if args.keep and done[name] >= set(seeds):
            print(f"{name}: every seed kept, nothing to run", flush=True)
    if not jobs:
        return 0
    with ctx.Pool(args.jobs, maxtasksperchild=1) as pool:
        for name, summary in pool.imap_unordered(_run_one, jobs):
            by_exp[name].append(summary)
            if len(by_exp[name]) + len(done[name] & set(seeds)) == len(seeds):
                write(name)
    return 0


def kept_runs(results: Path, name: str, config: dict, seeds: list[int]) -> list[dict] | None:
    """The records of experiment ``name`` in ``results`` that hold runs of ``seeds``: one entry per record
    (its file, seeds, commit, date); None when none does. A record of another config stops the runner."""
    from forwardonly.config import load_config, to_dict
    from forwardonly.local.config import LocalConfig

    out = []
    for path in sorted([*results.glob(f"{name}.json"), *results.glob(f"{name}.*.json")]):
        rec = json.loads(path.read_text())
        # keys added to the config since the record was made take their defaults, which keep the old behaviour
        if to_dict(load_config(LocalConfig, base=rec["config"])) != config:
            sys.exit(f"{path}: recorded with a different config than the experiment file; run without --keep")
        have = [r["seed"] for r in rec["results"]["runs"] if r["seed"] in seeds]
        if have:
            out.append({"file": path.name, "seeds": have, "git": {k: (rec.get("git") or {}).get(k)
                                                                   for k in ("commit", "dirty")},
                        "created": rec.get("created")})
    return out or None


if __name__ == "__main__":
    from forwardonly.errors import script_main

    sys.exit(script_main(main))
