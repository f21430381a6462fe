"""Run the ZO-Bench grid: every experiment x seed in its own process, one result JSON each.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/zo_bench/run.py --check                       # validate every file, run nothing
    PYTHONPATH=src python benchmarks/zo_bench/run.py                               # the default grid, seeds 0,1,2
    PYTHONPATH=src python benchmarks/zo_bench/run.py --only 'sentiment-lora-*' --seeds 0,1,2 task.max_test=100
    PYTHONPATH=src python benchmarks/zo_bench/run.py --suite qzo          # another suite's experiments
    forwardonly report benchmarks/zo_bench/results --out benchmarks/zo_bench/report

``--suite NAME`` runs ``benchmarks/NAME/``'s experiments with its own ``defaults.yaml`` into
``benchmarks/NAME/results/runs/`` (the runner is shared: qzo, offload and convergence use it too). A config
with a ``federated`` section runs :func:`forwardonly.federated.run.run_federated` (the federated suite).

An experiment is a folder ``experiments/NAME/`` holding ``overrides.yaml``: the
keys of a :class:`forwardonly.lm.config.TrainConfig` that differ from
``defaults.yaml``. ``key=value`` arguments after the options apply to every
experiment (and are recorded in every result). A folder that also holds
``NOT_IMPLEMENTED.md`` is declared but skipped: the method it needs does not
exist yet, and that file says what is missing.

Before anything runs, ALL files are loaded and checked: an unknown key, a value
of the wrong type or a model that is not available stops the runner with the
file (and line) at fault. Then each run is a subprocess (``--child``) that
trains with :func:`forwardonly.lm.train.run` under
:class:`forwardonly.bench.measure.PeakMemory` and writes
a new record ``results/runs/NAME.seedN.<UTC time>.json`` with
:func:`forwardonly.bench.record.make_record`: the resolved config, seed, forward
budget and forwards spent, wall and train time, peak memory, zero-shot
(``test_before``) and final (``test_after``) metrics, the runner's command and the
code (commit, and the diff when the tree differs from it). A run that crashes (or
exceeds ``--timeout``) is written as ``status: failed`` with its error, and the
next run starts. An experiment x seed that already has an ``ok`` record of the
same config is not run again unless ``--force``, which adds a record beside the
old ones: nothing is overwritten, and the report takes the median over all.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

STOPPING = threading.Event()

HERE = Path(__file__).resolve().parent
DEFAULTS = HERE / "defaults.yaml"
EXPERIMENTS = HERE / "experiments"
RESULTS = HERE / "results" / "runs"
RUNNING: set = set()  # child processes in flight (killed if the runner is stopped)


def discover(root: Path = EXPERIMENTS) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def validate(defaults: Path, folders: list[Path], overrides: list[str]) -> tuple[dict, list[Path]]:
    """Load every experiment (raises ``UserError`` naming the file). Returns resolved configs and skipped folders."""
    import yaml

    from forwardonly.config import load_config, to_dict
    from forwardonly.errors import UserError
    from forwardonly.lm.config import TrainConfig
    from forwardonly.models.loading import resolve

    load_config(TrainConfig, defaults)  # the defaults alone must be valid: errors then name defaults.yaml
    base = yaml.safe_load(defaults.read_text()) or {}
    configs, pending, models = {}, [], {}
    for folder in folders:
        path = folder / "overrides.yaml"
        if not path.is_file():
            raise UserError(f"{folder}: an experiment folder needs an overrides.yaml")
        if (folder / "NOT_IMPLEMENTED.md").is_file():
            pending.append(folder)
            continue
        cfg = load_config(TrainConfig, path, overrides, base=base)
        if cfg.model.name not in models:
            try:
                models[cfg.model.name] = resolve(cfg.model.name)
            except UserError as e:
                raise UserError(f"{path}: {e}") from None
        configs[folder.name] = to_dict(cfg)
    return configs, pending


# ----------------------------------------------------------------------------- one run (child process)
def child(spec_path: str) -> int:
    import torch

    from forwardonly.bench.measure import PeakMemory
    from forwardonly.bench.record import make_record, write_record
    from forwardonly.config import load_config
    from forwardonly.lm.config import TrainConfig
    from forwardonly.lm.train import run

    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(TrainConfig, None, None, base=spec["config"])
    t0 = time.perf_counter()
    with PeakMemory(interval=0.01) as mem:
        if cfg.federated is not None:  # a federated ZO run (forwardonly federated)
            from forwardonly.federated.run import run_federated

            summary = run_federated(cfg)
        else:
            summary = run(cfg, progress=False)
    wall = time.perf_counter() - t0
    keep = ("test_before", "test_after", "forwards", "backwards", "step", "train_time_s", "history", "evals",
            "peak_rss_bytes", "skipped_steps", "trainable_parameters", "clients", "rounds", "client_examples",
            "client_labels", "bytes_sent", "bytes_per_client_round", "bytes_total_uplink",
            "bytes_down_per_client_round", "engine")
    results = {k: summary[k] for k in keep if k in summary}
    results.update(wall_time_s=wall, budget_forwards=cfg.budget_forwards, memory=mem.result(),
                   torch_threads=torch.get_num_threads())
    rec = make_record(f"{spec.get('suite', 'zo_bench')}/{spec['experiment']}", spec["config"], results,
                      command=spec["command"], status="ok", experiment=spec["experiment"],
                      experiment_file=spec["experiment_file"], seed=cfg.seed, seeds=spec["seeds"],
                      overrides=spec["overrides"])
    write_record(spec["out"], rec)
    return 0


def ok_record(results: Path, name: str, config: dict) -> Path | None:
    """An ``ok`` record of experiment ``name`` with exactly ``config`` (seed included) in ``results``, if any."""
    seed = config["seed"]
    for path in sorted([*results.glob(f"{name}.seed{seed}.json"), *results.glob(f"{name}.seed{seed}.*.json")]):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if rec.get("status") == "ok" and rec.get("config") == config:
            return path
    return None


def launch(name: str, config: dict, seed: int, seeds: list[int], overrides: list[str], out: Path,
           timeout: float | None, suite: str = "zo_bench") -> dict:
    """Run one experiment x seed in a fresh process; on a crash, write the failure record ourselves."""
    import tempfile

    from forwardonly.bench.record import command_info, make_record, write_record

    config = {**config, "seed": seed}
    command = {**command_info(), "child": "run.py --child SPEC (one experiment x seed)"}
    spec = {"experiment": name, "experiment_file": f"experiments/{name}/overrides.yaml", "config": config,
            "seeds": seeds, "overrides": overrides, "out": str(out), "suite": suite, "command": command}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    env = {**os.environ, "OMP_NUM_THREADS": str(config.get("threads") or 1), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    p = subprocess.Popen([sys.executable, __file__, "--child", f.name], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    RUNNING.add(p)
    try:
        _, err = p.communicate(timeout=timeout)
        code = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        _, partial = p.communicate()
        code, err = "timeout", f"{partial}\nTimeoutExpired: no result after {timeout} s"
    finally:
        RUNNING.discard(p)
        os.unlink(f.name)
    if STOPPING.is_set():
        raise KeyboardInterrupt  # the runner is being stopped: no failure record for a run it killed
    if code == 0 and out.is_file():
        return json.loads(out.read_text())
    tail = "\n".join((err or "").strip().splitlines()[-20:]) or f"exit status {code}, no output"
    rec = make_record(f"{suite}/{name}", config, {"wall_time_s": time.time() - t0}, command=command,
                      status="failed", error=tail, returncode=code, experiment=name,
                      experiment_file=spec["experiment_file"], seed=seed, seeds=seeds, overrides=overrides)
    write_record(out, rec)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--only", help="comma-separated experiment names or glob patterns (default: all)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--suite", default="zo_bench", help="the suite under benchmarks/ whose experiments to run "
                    "(sets --experiments, --defaults and --results; default zo_bench)")
    ap.add_argument("--experiments", help="folder of experiment folders (default: the suite's experiments/)")
    ap.add_argument("--defaults", help="the keys every experiment shares (default: the suite's defaults.yaml)")
    ap.add_argument("--results", help="where result JSON goes (default: the suite's results/runs/)")
    ap.add_argument("--check", action="store_true", help="validate every experiment file and stop")
    ap.add_argument("--force", action="store_true",
                    help="run experiments that already have an ok record too (a new record beside the old)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds before a run is stopped and failed")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, each its own process (default 1)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every experiment")
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child)
    suite_dir = HERE.parent / args.suite
    if not suite_dir.is_dir():
        print(f"run.py: error: no suite {args.suite!r} under {HERE.parent}", file=sys.stderr)
        return 2
    args.experiments = args.experiments or str(suite_dir / "experiments")
    args.defaults = args.defaults or str(suite_dir / "defaults.yaml")
    args.results = args.results or str(suite_dir / "results" / "runs")

    from forwardonly.bench.report import error_summary
    from forwardonly.errors import UserError

    folders = discover(Path(args.experiments))
    if args.only:
        pats = args.only.split(",")
        folders = [f for f in folders if any(fnmatch.fnmatch(f.name, p) for p in pats)]
    if not folders:
        print(f"run.py: no experiments match {args.only!r} in {args.experiments}", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        configs, pending = validate(Path(args.defaults), folders, args.overrides)
    except (UserError, ValueError) as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    for folder in pending:
        print(f"skip {folder.name}: not implemented yet (see {folder / 'NOT_IMPLEMENTED.md'})", file=sys.stderr)
    print(f"{len(configs)} experiments x {len(seeds)} seeds valid", file=sys.stderr)
    if args.check:
        return 0
    from forwardonly.bench.record import new_record_path

    results = Path(args.results)
    todo = []
    for name, config in configs.items():
        # zero-shot experiments (steps 0) do not depend on the seed unless the scheme initialises weights
        run_seeds = seeds[:1] if config["steps"] == 0 and config["scheme"]["name"] in ("full", "lora") else seeds
        for seed in run_seeds:
            have = ok_record(results, name, {**config, "seed": seed})
            if have and not args.force:
                print(f"keep {have.name} (an ok record of this config; --force to add another run)", file=sys.stderr)
                continue
            todo.append((name, config, seed, run_seeds, new_record_path(results, f"{name}.seed{seed}")))
    started, n_failed, n_done = time.time(), 0, 0

    def one(item):
        name, config, seed, run_seeds, out = item
        t0 = time.time()
        return item, launch(name, config, seed, run_seeds, args.overrides, out, args.timeout, args.suite), \
            time.time() - t0

    # each run is its own process with its own threads (``threads`` in the config); --jobs runs that many at once.
    # Ctrl-C or SIGTERM stops the runs in flight (they are not recorded) and still logs the invocation.
    import signal
    from concurrent.futures import ThreadPoolExecutor, as_completed

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    interrupted = False
    STOPPING.clear()
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        for fut in as_completed([pool.submit(one, item) for item in todo]):
            (name, _, seed, _, _), rec, dt = fut.result()
            n_done += 1
            n_failed += rec["status"] != "ok"
            after = rec.get("results", {}).get("test_after", {})
            print(f"[{n_done}/{len(todo)}] {name} seed {seed}: {rec['status']} in {dt:.0f} s {json.dumps(after)}"
                  + (f"\n  {error_summary(rec['error'])}" if rec["status"] != "ok" else ""), file=sys.stderr,
                  flush=True)
    except KeyboardInterrupt:
        interrupted = True
        STOPPING.set()
        for p in list(RUNNING):
            p.kill()
        print(f"stopped after {n_done} of {len(todo)} runs", file=sys.stderr)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    elapsed = time.time() - started
    if todo:  # one line per invocation: how long the grid took is the sum of these
        results.mkdir(parents=True, exist_ok=True)
        import platform

        line = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "wall_time_s": round(elapsed, 1),
                "jobs": args.jobs, "runs": len(todo), "done": n_done, "interrupted": interrupted, "failed": n_failed, "only": args.only,
                "overrides": args.overrides, "cpus": os.cpu_count(), "machine": platform.node(),
                "load_avg_end": os.getloadavg()}
        with open(results / "invocations.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
    print(f"done in {elapsed:.0f} s; {n_failed} failed", file=sys.stderr)
    return 130 if interrupted else 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
