"""Kill ``forwardonly train`` with SIGKILL, resume it with ``--resume``, and compare with an uninterrupted run.

    PYTHONPATH=src python benchmarks/faults/kill_resume.py --kills 20 \\
        --out benchmarks/faults/results/kill_resume-20.json

One uninterrupted reference run of a tiny random Llama (2 layers, 60k parameters,
ZO-Adam with q=2, accumulation 2, a cosine schedule with warm-up, a checkpoint
every 4 steps and a metrics row every 3, so a checkpoint falls between two
rows; validation every 10 steps, test before and after), then ``--kills``
trials, each a fresh run killed once and resumed to the end. Trials alternate
between two kinds of kill:

* ``io``: at an exact point of one of the run's atomic writes (checkpoint
  directories, metrics, seed log, summary): before or after one of its I/O
  calls, chosen uniformly among all such points of the reference run
  (``pause_at.py`` holds the process there; the script kills it);
* ``time``: at a uniformly random moment of the run's wall time (start-up,
  model loading and evaluation included).

After each kill the script checks that every checkpoint on disk (including a
previous one moved aside by an interrupted directory swap) loads, and after the
resume that these are bitwise equal to the reference run's: the trained weights
(``checkpoint/trainable.safetensors``), the optimizer state
(``checkpoint/optimizer.pt``), the seed logs (``seedlog.json`` and the
checkpoint's), the metrics (``metrics.jsonl``), ``trainer.json`` and
``summary.json``. Wall-clock fields (``train_time_s``, ``peak_rss_bytes``) and the
output directory's name are left out of the comparison; everything else must be
equal byte for byte. The resumed run directory must hold no temporary leftovers.
The result is one record (``forwardonly.bench.record``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TIMING = ("train_time_s", "peak_rss_bytes")


def overrides(model_dir: Path, steps: int) -> list[str]:
    return [f"model.name={model_dir}", "task.max_train=64", "task.max_eval=8", "task.max_test=8",
            "batch_size=4", "eval_batch_size=8", "threads=1", f"steps={steps}", "optim.name=zo-adam",
            "optim.lr=1e-3", "optim.q=2", "optim.schedule=cosine", "optim.warmup_steps=3", "accum_steps=2",
            "log_every=3", "save_every=4", "eval_every=10", "seed=3"]


def make_model(path: Path) -> None:
    from forwardonly.models import tiny_model

    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)


def env() -> dict:
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def forwardonly(*args: str) -> list[str]:
    return [sys.executable, "-m", "forwardonly.cli.main", *args]


def run(cmd: list[str], log: Path, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run ``cmd`` with its output in ``log``; one that outlives ``timeout`` counts as exit status 124."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        try:
            return subprocess.run(cmd, env=env(), stdout=f, stderr=f, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            f.write(f"(timed out after {timeout}s)\n")
            return subprocess.CompletedProcess(cmd, 124)


# ----------------------------------------------------------------------------- what must match
def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _strip(obj, out_dir: str):
    """``obj`` without wall-clock fields, with the run directory's name replaced."""
    if isinstance(obj, dict):
        return {k: _strip(v, out_dir) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v, out_dir) for v in obj]
    if isinstance(obj, str):
        return obj.replace(out_dir, "<run>")
    return obj


def _json(path: Path, out_dir: str):
    return _strip(json.loads(path.read_text()), out_dir) if path.is_file() else None


def snapshot(run_dir: Path) -> dict:
    c, name = run_dir / "checkpoint", str(run_dir)
    metrics = run_dir / "metrics.jsonl"
    return {
        "weights": _sha(c / "trainable.safetensors"),
        "optimizer": _sha(c / "optimizer.pt"),
        "seedlog": _sha(run_dir / "seedlog.json"),
        "checkpoint_seedlog": _sha(c / "seedlog.json"),
        "metrics": [_strip(json.loads(x), name) for x in metrics.read_text().splitlines()] if metrics.is_file()
        else None,
        "trainer": _json(c / "trainer.json", name),
        "summary": _json(run_dir / "summary.json", name),
        "leftovers": sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")),
    }


def checkpoints_on_disk(run_dir: Path) -> list[dict]:
    """Every checkpoint directory after a kill (the live one and any moved aside), each loaded read-only."""
    import torch
    from safetensors.torch import load_file

    found = []
    for c in sorted(run_dir.glob("checkpoint")) + sorted(run_dir.glob(".checkpoint.old*")):
        entry = {"path": c.name}
        try:
            entry["step"] = json.loads((c / "trainer.json").read_text())["step"]
            load_file(str(c / "trainable.safetensors"))
            torch.load(c / "optimizer.pt", map_location="cpu", weights_only=True)
            entry["loads"] = True
        except Exception as e:  # noqa: BLE001 - a corrupt checkpoint is what this looks for
            entry["loads"], entry["error"] = False, f"{type(e).__name__}: {e}"[:300]
        found.append(entry)
    return found


# ----------------------------------------------------------------------------- trials
def kill_at_io_point(cmd: list[str], point: dict, work: Path, log: Path) -> dict:
    marker = work / "paused.json"
    marker.unlink(missing_ok=True)
    full = [sys.executable, str(HERE / "pause_at.py"), "--write", str(point["write"]), "--op", str(point["op"]),
            "--when", point["when"], "--marker", str(marker), "--", *cmd[3:]]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(full)}\n")
        f.flush()
        proc = subprocess.Popen(full, env=env(), stdout=f, stderr=f)
    start = time.monotonic()
    while not marker.exists() and proc.poll() is None and time.monotonic() - start < 600:
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    paused = json.loads(marker.read_text()) if marker.exists() else None
    return {"killed": killed and paused is not None, "at_s": round(time.monotonic() - start, 2), "paused": paused}


def kill_at_time(cmd: list[str], seconds: float, log: Path) -> dict:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}   # SIGKILL after {seconds:.2f}s\n")
        f.flush()
        proc = subprocess.Popen(cmd, env=env(), stdout=f, stderr=f)
    try:
        proc.wait(timeout=seconds)
        killed = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = True
    return {"killed": killed, "at_s": round(seconds, 2)}


def trial(i: int, kind: str, rng: random.Random, args, cmd_of, points, ref_seconds, ref, work) -> dict:
    run_dir = work / f"trial{i:02d}"
    log = work / f"trial{i:02d}.log"
    cmd = cmd_of(run_dir)
    if kind == "io":
        point = rng.choice(points)
        out = kill_at_io_point(cmd, point, work, log)
    else:
        # a uniform moment of the run; one that ended first (the machine was quicker than for the
        # reference) is run again with a moment drawn within the time it took
        span = ref_seconds
        for attempt in range(1, 6):
            t0 = time.monotonic()
            out = kill_at_time(cmd, rng.uniform(0.02, 0.98) * span, log)
            out["attempt"] = attempt
            if out["killed"]:
                break
            span = time.monotonic() - t0
            shutil.rmtree(run_dir, ignore_errors=True)
    out.update(kind=kind, checkpoints=checkpoints_on_disk(run_dir) if run_dir.exists() else [])
    t0 = time.monotonic()
    resume_log = work / f"trial{i:02d}-resume.log"
    res = run([*cmd, "--resume"], resume_log)
    out["resume_s"] = round(time.monotonic() - t0, 1)
    out["resume_exit"] = res.returncode
    m = re.search(r"^resumed .* at step (\d+)$", resume_log.read_text(), re.MULTILINE)
    out["resumed_at"] = int(m.group(1)) if m else 0
    got = snapshot(run_dir) if res.returncode == 0 else {}
    out["differs"] = sorted(k for k in ref if got.get(k) != ref[k])
    steps_on_disk = [c["step"] for c in out["checkpoints"] if c.get("loads")]
    out["corrupt_checkpoints"] = sum(not c["loads"] for c in out["checkpoints"])
    # The resume must continue from the newest whole checkpoint the kill left, never from scratch past it.
    out["resumed_from_newest"] = out["resumed_at"] == max(steps_on_disk, default=0)
    out["equal"] = res.returncode == 0 and not out["differs"] and out["resumed_from_newest"]
    if out["equal"] and not args.keep:
        shutil.rmtree(run_dir)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="trials, one SIGKILL and one --resume each (default 20)")
    p.add_argument("--steps", type=int, default=24, help="training steps of the run (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill points and times (default 0)")
    p.add_argument("--io-in", metavar="NAME", help="io kills only inside writes of this file or directory "
                   "(e.g. checkpoint); default: any atomic write")
    p.add_argument("--out", help="result record (JSON); default: print it only")
    p.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep every trial's run directory")
    args = p.parse_args(argv)
    if args.kills < 1:
        p.error(f"--kills must be at least 1, got {args.kills}")
    sys.path.insert(0, str(ROOT / "src"))
    from forwardonly.bench.record import make_record, write_record

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="forwardonly-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    make_model(work / "tiny")
    ov = overrides(work / "tiny", args.steps)

    def cmd_of(run_dir: Path) -> list[str]:
        return forwardonly("train", *ov, f"out_dir={run_dir}", "--no-progress")

    # The reference, counted: its atomic writes and their I/O calls are the io kills' choices.
    t0 = time.monotonic()
    res = run([sys.executable, str(HERE / "pause_at.py"), "--count", str(work / "writes.json"), "--",
               *cmd_of(work / "reference")[3:]], work / "reference.log")
    ref_seconds = time.monotonic() - t0
    if res.returncode != 0:
        print((work / "reference.log").read_text()[-3000:], file=sys.stderr)
        return 1
    writes = json.loads((work / "writes.json").read_text())
    points = [{"write": n, "op": k, "when": w} for n, wr in enumerate(writes) for k in range(len(wr["ops"]))
              for w in ("before", "after") if args.io_in in (None, wr["dest"])]
    if not points:
        p.error(f"--io-in {args.io_in}: the run writes no such file")
    ref = snapshot(work / "reference")
    rng = random.Random(args.seed)
    trials = []
    for i in range(args.kills):
        t = trial(i, "io" if i % 2 == 0 else "time", rng, args, cmd_of, points, ref_seconds, ref, work)
        trials.append(t)
        where = (f"{t['paused']['dest']} write, {t['paused']['when']} {t['paused']['call']}" if t.get("paused")
                 else f"{t['at_s']}s")
        print(f"kill {i + 1}/{args.kills} ({t['kind']}: {where}; killed={t['killed']}): resumed at step "
              f"{t['resumed_at']}, {'bitwise equal' if t['equal'] else 'DIFFERS: ' + ', '.join(t['differs'])}",
              flush=True)
    in_ckpt = sum(1 for t in trials if (t.get("paused") or {}).get("dest") == "checkpoint" and t["killed"])
    results = {
        "kills": sum(t["killed"] for t in trials),
        "trials": len(trials),
        "bitwise_equal": sum(t["equal"] for t in trials),
        "corrupt_checkpoints": sum(t["corrupt_checkpoints"] for t in trials),
        "kills_inside_checkpoint_writes": in_ckpt,
        "reference_seconds": round(ref_seconds, 1),
        "io_points": len(points),
        "per_trial": trials,
    }
    config = {"kills": args.kills, "steps": args.steps, "seed": args.seed, "io_in": args.io_in, "overrides": ov[1:],
              "model": "tiny_model('llama', seed=0)", "compared": sorted(ref)}
    record = make_record("faults/kill_resume", config, results,
                         command=" ".join(["python", "benchmarks/faults/kill_resume.py", *(argv or sys.argv[1:])]))
    if args.out:
        write_record(args.out, record)
    print(json.dumps({k: v for k, v in results.items() if k != "per_trial"}))
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    ok = (results["bitwise_equal"] == len(trials) == results["kills"]) and results["corrupt_checkpoints"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
