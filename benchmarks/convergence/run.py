"""Run the convergence suite: every experiment x seed in its own process, one new result record each.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/convergence/run.py --check                        # validate every file, run nothing
    PYTHONPATH=src python benchmarks/convergence/run.py --only 'E/k16/sweep/*' --seeds 0 --jobs 2
    PYTHONPATH=src python benchmarks/convergence/run.py --only 'E/k16/*' --seeds 0,1,2 --jobs 2
    forwardonly report benchmarks/convergence/results --out benchmarks/convergence/report

An experiment is a folder under ``experiments/`` holding ``overrides.yaml``; its name is its path
(``E/k16/mezo``). Its configuration (a :class:`forwardonly.lm.config.TrainConfig`) is every
``defaults.yaml`` on the way down from ``experiments/`` (outermost first), then its own
``overrides.yaml`` (an ``optim`` mapping that names an optimizer replaces the outer ``optim`` whole, so
no option of another optimizer leaks in). ``key=value`` arguments after the options apply to every experiment and are
recorded. Before anything runs every file is loaded and checked: an unknown key or a bad value stops
the runner naming the file and line.

Each run is a child process (``--child``) that trains with :func:`forwardonly.lm.train.run` (the
library's own loop), checkpointing into ``runs/convergence/<experiment>.seed<N>`` so a run that was
stopped resumes where it was (``--resume`` semantics of ``forwardonly train``), and writes a new
record ``results/<experiment>.seed<N>.<UTC time>.json`` (records are never overwritten): the resolved
config, the test curve (``test_every``), validation curve, training history, forward passes, times,
peak RSS of the whole run, load averages while it ran, and the command. An experiment x seed that
already has an ``ok`` record is skipped unless ``--again``.

On a shared machine ``--pause-while FILE`` makes the runner polite: while FILE exists (someone is
timing something) no run starts and the runs in flight are stopped with SIGSTOP, then continued; the
seconds paused are recorded (``paused_s``) and are part of the wall time, never of ``train_time_s``
(the child's training loop reads a clock that leaves them out, ``train_time_excludes_pauses``).
Without the flag nothing pauses.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXPERIMENTS = HERE / "experiments"
RESULTS = HERE / "results"
SCRATCH = ROOT / "runs" / "convergence"
SUITE = "convergence"


# ----------------------------------------------------------------------------- experiments
def discover(root: Path = EXPERIMENTS) -> list[str]:
    """Every experiment name (the path of a folder holding ``overrides.yaml``, relative to ``root``)."""
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("overrides.yaml"))


def layers(name: str, root: Path = EXPERIMENTS) -> list[Path]:
    """The files that make ``name``'s config, outermost first: each ``defaults.yaml`` on the way, then its own."""
    parts, out, here = name.split("/"), [], root
    for part in ["", *parts]:
        here = here / part if part else here
        if (here / "defaults.yaml").is_file():
            out.append(here / "defaults.yaml")
    return [*out, root / name / "overrides.yaml"]


def resolve_config(name: str, overrides: list[str], root: Path = EXPERIMENTS) -> dict:
    """The resolved TrainConfig of ``name`` as a dict (raises ``UserError`` naming the file at fault)."""
    import yaml

    from forwardonly.config import load_config, to_dict
    from forwardonly.lm.config import TrainConfig

    files, base = layers(name, root), {}
    for path in files[:-1]:  # each layer must be valid on its own (its errors name it), then it is merged as written
        load_config(TrainConfig, path, base=base)
        base = merge(base, yaml.safe_load(path.read_text()) or {})
    own = yaml.safe_load(files[-1].read_text()) or {}
    if isinstance(own, dict) and isinstance(own.get("optim"), dict) and "name" in own["optim"]:
        base = {k: v for k, v in base.items() if k != "optim"}  # another optimizer: none of the outer options
    return to_dict(load_config(TrainConfig, files[-1], overrides, base=base))


def merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, mappings merged key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate(names: list[str], overrides: list[str], root: Path = EXPERIMENTS) -> dict[str, dict]:
    from forwardonly.errors import UserError
    from forwardonly.models.loading import resolve

    configs, models = {}, set()
    for name in names:
        cfg = resolve_config(name, overrides, root)
        if cfg["model"]["name"] not in models:
            try:
                resolve(cfg["model"]["name"])
            except UserError as e:
                raise UserError(f"{layers(name, root)[-1]}: {e}") from None
            models.add(cfg["model"]["name"])
        configs[name] = cfg
    return configs


def done(name: str, seed: int, results: Path = RESULTS) -> bool:
    """Whether ``name`` x ``seed`` already has an ``ok`` record."""
    folder = (results / name).parent
    for path in folder.glob(f"{Path(name).name}.seed{seed}.*.json"):
        try:
            if json.loads(path.read_text()).get("status") == "ok":
                return True
        except (OSError, json.JSONDecodeError):
            continue
    return False


def record_path(name: str, seed: int, results: Path = RESULTS) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path, n = results / f"{name}.seed{seed}.{stamp}.json", 1
    while path.exists():
        n += 1
        path = results / f"{name}.seed{seed}.{stamp}-{n}.json"
    return path


# ----------------------------------------------------------------------------- one run (child process)
class PausedClock:
    """The training loop's clock (``run(clock=...)``): ``perf_counter`` minus the seconds the run spent
    stopped by ``--pause-while``.

    The parent writes the run's total paused seconds to ``paused_file`` before it sends SIGCONT; the
    handler reads it. A step that a pause fell inside is then timed without the pause, exactly (a
    pause during an evaluation shifts the clock while no step is being timed)."""

    def __init__(self, paused_file: Path):
        self.paused_file, self.offset = paused_file, 0.0

    def on_continue(self, *_):
        try:
            self.offset = float(self.paused_file.read_text())
        except (OSError, ValueError):
            pass  # no pause recorded: the clock stays as it was

    def __call__(self) -> float:
        return time.perf_counter() - self.offset


def child(spec_path: str) -> int:
    import torch

    from forwardonly.bench.measure import PeakMemory
    from forwardonly.config import load_config
    from forwardonly.lm.config import TrainConfig
    from forwardonly.lm.train import run

    clock = PausedClock(Path(spec_path).with_name("paused_s"))
    signal.signal(signal.SIGCONT, clock.on_continue)
    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(TrainConfig, None, None, base=spec["config"])
    resume = (Path(cfg.out_dir) / "checkpoint" / "trainer.json").is_file()
    t0 = time.perf_counter()
    with PeakMemory(interval=0.05) as mem:
        summary = run(cfg, resume=resume, progress=False, clock=clock)  # train_time_s leaves the pauses out
    keep = ("test_before", "test_after", "test_curve", "evals", "history", "forwards", "backwards", "step",
            "train_time_s", "peak_rss_bytes", "skipped_steps", "trainable_parameters", "train_examples", "head_init",
            "auto_lr")  # lr: auto's calibrations, extra forwards and rejected steps
    results = {k: summary[k] for k in keep if k in summary}
    results.update(run_time_s=time.perf_counter() - t0, budget_forwards=cfg.budget_forwards, memory=mem.result(),
                   torch_threads=torch.get_num_threads(), resumed=resume)
    Path(spec["out"]).write_text(json.dumps(results))
    return 0


def _load_sampler(stop: threading.Event, samples: list) -> None:
    while not stop.wait(60.0):
        samples.append(os.getloadavg()[0])


def _quiet_guard(p: subprocess.Popen, stop: threading.Event, paused: list, quiet: Path, poll: float = 5.0,
                 paused_file: Path | None = None) -> None:
    """SIGSTOP the run while ``quiet`` exists, SIGCONT it after; adds the seconds paused to ``paused[0]``
    and writes the total to ``paused_file`` before continuing the run (see :class:`PausedClock`)."""
    while not stop.wait(poll):
        if quiet.exists() and p.poll() is None:
            t = time.time()
            os.kill(p.pid, signal.SIGSTOP)
            while quiet.exists() and not stop.is_set():
                time.sleep(poll)
            paused[0] += time.time() - t
            if p.poll() is None:
                if paused_file is not None:  # read by the child's PausedClock when it continues
                    tmp = paused_file.with_suffix(".tmp")
                    tmp.write_text(repr(paused[0]))
                    os.replace(tmp, paused_file)
                os.kill(p.pid, signal.SIGCONT)


def launch(name: str, config: dict, seed: int, argv: list[str], overrides: list[str], results: Path,
           pause_while: Path | None = None) -> dict:
    """One experiment x seed in a fresh process; writes and returns its record (``ok`` or ``failed``).

    With ``pause_while`` the run is stopped (SIGSTOP) while that file exists."""
    import tempfile

    from forwardonly.bench.record import git_state, make_record, write_record

    code_at_start = git_state(ROOT)  # the code this run starts with (the tree may move on while it runs)
    scratch = SCRATCH / f"{name}.seed{seed}"
    config = {**config, "seed": seed, "out_dir": str(scratch), "save_every": config.get("save_every") or 100}
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"config": config, "out": str(Path(tmp) / "results.json")}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "OMP_NUM_THREADS": str(config.get("threads") or 1), "TOKENIZERS_PARALLELISM": "false"}
        stop, samples, paused = threading.Event(), [os.getloadavg()[0]], [0.0]
        t0 = time.time()
        scratch.parent.mkdir(parents=True, exist_ok=True)
        with open(scratch.parent / f"{scratch.name}.log", "a") as log:
            p = subprocess.Popen([sys.executable, __file__, "--child", str(Path(tmp) / "spec.json")],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
            threads = [threading.Thread(target=_load_sampler, args=(stop, samples), daemon=True)]
            if pause_while is not None:
                threads.append(threading.Thread(target=_quiet_guard, args=(p, stop, paused, pause_while, 5.0,
                                                                   Path(tmp) / "paused_s"), daemon=True))
            for t in threads:
                t.start()
            try:
                code = p.wait()
            except KeyboardInterrupt:
                p.terminate()
                p.wait()
                raise
            finally:
                stop.set()
        res = json.loads(Path(spec["out"]).read_text()) if code == 0 and Path(spec["out"]).is_file() else None
    extra = {"git": code_at_start, "experiment": name, "experiment_files": [str(f.relative_to(ROOT)) for f in layers(name)],
             "seed": seed, "overrides": overrides,
             "command": {"argv": argv, "cwd": os.getcwd(), "python": sys.executable,
                         "env": {k: env[k] for k in ("OMP_NUM_THREADS", "PYTHONPATH") if k in env}},
             "load_avg": {"start": samples[0], "median": sorted(samples)[len(samples) // 2], "max": max(samples),
                          "samples_per_minute": samples},
             "paused_s": round(paused[0], 1), "train_time_excludes_pauses": True, "wall_time_s": round(time.time() - t0, 1)}
    if res is None:
        log_path = scratch.parent / f"{scratch.name}.log"
        tail = "\n".join(log_path.read_text().strip().splitlines()[-20:]) if log_path.is_file() else ""
        rec = make_record(f"{SUITE}/{name}", config, {}, status="failed", error=tail or f"exit status {code}",
                          returncode=code, **extra)
    else:
        rec = make_record(f"{SUITE}/{name}", config, res, status="ok", **extra)
    path = record_path(name, seed, results)
    write_record(path, rec)
    if res is not None:  # the record holds what the run measured; its checkpoint is no longer needed
        import shutil

        shutil.rmtree(scratch / "checkpoint", ignore_errors=True)
    rec["_path"] = str(path)
    return rec


# ----------------------------------------------------------------------------- the runner
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--only", help="comma-separated experiment names or glob patterns, run in that order (default: all)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--experiments", default=str(EXPERIMENTS), help="folder of experiments")
    ap.add_argument("--results", default=str(RESULTS), help="where records go")
    ap.add_argument("--check", action="store_true", help="validate every experiment file and stop")
    ap.add_argument("--again", action="store_true", help="run even where an ok record exists (a new record)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (default 1; at most 2 on a shared machine)")
    ap.add_argument("--pause-while", metavar="FILE", type=Path,
                    help="on a shared machine: start nothing and SIGSTOP the runs in flight while FILE exists")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every experiment")
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child)

    from forwardonly.errors import UserError

    root = Path(args.experiments)
    names = discover(root)
    if args.only:
        pats = args.only.split(",")
        # in the order of --only (the first pattern an experiment matches), then by name
        rank = {n: min((i for i, p in enumerate(pats) if fnmatch.fnmatch(n, p)), default=None) for n in names}
        names = sorted((n for n in names if rank[n] is not None), key=lambda n: (rank[n], n))
    if not names:
        print(f"run.py: no experiments match {args.only!r} in {root}", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"run.py: --seeds {args.seeds!r}: not a comma-separated list of integers (e.g. 0,1,2)", file=sys.stderr)
        return 2
    try:
        configs = validate(names, args.overrides, root)
    except (UserError, ValueError) as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(configs)} experiments x {len(seeds)} seeds valid", file=sys.stderr)
    if args.check:
        return 0
    results = Path(args.results)
    todo = [(n, c, s) for n, c in configs.items() for s in (seeds[:1] if c["steps"] == 0 and not
                                                              c["task"]["shots_per_class"] else seeds)
            if args.again or not done(n, s, results)]
    print(f"{len(todo)} runs to do", file=sys.stderr)
    cmd = [sys.executable, *sys.argv] if argv is None else [sys.executable, __file__, *argv]
    lock, queue, failed = threading.Lock(), list(todo), [0]

    def worker():
        while True:
            while args.pause_while is not None and args.pause_while.exists():
                time.sleep(30)
            with lock:
                if not queue:
                    return
                name, config, seed = queue.pop(0)
            t0 = time.time()
            rec = launch(name, config, seed, cmd, args.overrides, results, args.pause_while)
            res = rec.get("results", {})
            after = (res.get("test_after") or {}).get("accuracy")
            val = ((res.get("evals") or [{}])[-1]).get("accuracy")
            with lock:
                failed[0] += rec["status"] != "ok"
                print(f"{name} seed {seed}: {rec['status']} in {time.time() - t0:.0f} s, test {after}, "
                      f"validation {val} -> {rec['_path']}", file=sys.stderr, flush=True)

    threads = [threading.Thread(target=worker) for _ in range(max(1, min(args.jobs, len(todo) or 1)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 1 if failed[0] else 0


if __name__ == "__main__":
    sys.exit(main())
