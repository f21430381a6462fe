"""``forwardonly demo``: watch a pretrained language model learn a task with forward passes only.

Fetches SmolLM2-135M into the model cache if needed, scores it on the held-out
test split of the shipped sentiment task, fine-tunes it with zeroth-order SGD
(the packaged ``configs/demo.yaml``), scores it again, and prints both
accuracies, the time and the peak memory (with ``steps=0``, one score: nothing
changed between). Overrides work as for ``train``::

    forwardonly demo
    forwardonly demo steps=40                 # a shorter run
    forwardonly demo out_dir=runs/demo        # keep the checkpoint, the seed log and the result record
    forwardonly demo --record benchmarks/demo/results   # also write a result record (the README's figures)

The result record (accuracy before and after, forward passes, training, evaluation and total time,
whole-process peak RSS, the machine's load average, the config, the command, commit and versions)
goes to ``out_dir/record.json`` when the run has an ``out_dir``, and to a new ``DIR/demo.<UTC time>.json``
with ``--record DIR``; neither replaces an existing file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .common import add_config_arguments

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


class Demo:
    help = "fine-tune SmolLM2-135M on sentiment with ZO-SGD on this machine, before/after accuracy"

    @staticmethod
    def add_arguments(p):
        add_config_arguments(p, None, "overrides of the demo config", progress="no progress bars")
        p.add_argument("--record", metavar="DIR",
                       help="also write a result record (config, command, code, accuracies, times, peak RSS) as a "
                            "new DIR/demo.<UTC time>.json")

    @staticmethod
    def run(args) -> int:
        from ..lm.train import run
        from ..models import zoo
        from .main import show_progress
        from .train import load_train_config

        cfg = load_train_config(CONFIG, args.overrides)
        if args.print_config:
            from .common import print_config

            return print_config(cfg)
        total, load_start = time.perf_counter(), os.getloadavg()
        if cfg.model.name in zoo.ZOO and zoo.cached(cfg.model.name) is None:
            log = logging.getLogger("forwardonly")
            log.info(f"fetching {cfg.model.name} into {zoo.model_dir(cfg.model.name)} (once) ...")
            zoo.fetch(cfg.model.name, log=log.info)
        start = time.perf_counter()
        s = run(cfg, progress=show_progress(args))
        wall = time.perf_counter() - start
        before, after = s["test_before"], s["test_after"]
        metric = "accuracy" if "accuracy" in after else "f1"
        gain = 100 * (after[metric] - before[metric])
        rss = s["peak_rss_bytes"]
        print(f"\nforwardonly demo: {cfg.model.name} on {cfg.task.name} ({cfg.task.test_split}, {after['n']} "
              f"held-out examples), {cfg.optim.name} on scheme {cfg.scheme.name}, {s['trainable_parameters']:,} "
              f"trainable parameters")
        if s.get("head_init"):
            h = s["head_init"]
            print(f"  head {h['layer']}: linear probe on {h['examples']} training examples, forward passes only "
                  f"(training accuracy {100 * h['train_accuracy']:.2f} %)")
        if s["step"] == 0:  # steps=0: what the run learned is the fitted head (or nothing)
            print(f"  {metric}         {100 * after[metric]:6.2f} %   (" + ("the fitted head; " if s.get("head_init")
                                                                        else "") + "no zeroth-order step: steps=0)")
        else:
            print(f"  {metric} before  {100 * before[metric]:6.2f} %" + ("   (the fitted head, before any step)"
                                                                         if s.get("head_init") else ""))
            print(f"  {metric} after   {100 * after[metric]:6.2f} %   ({gain:+.2f} points)")
        print(f"  steps {s['step']}, forward passes {s['forwards']}, training {s['train_time_s']:.0f} s, "
              f"total {wall:.0f} s")
        print(f"  peak memory (RSS) {rss / 2**20:.0f} MiB" if rss else "  peak memory: unavailable here")
        if cfg.out_dir or args.record:
            for path in write_demo_records(cfg, s, args.record, run_s=wall, total_s=time.perf_counter() - total,
                                           load_start=load_start):
                print(f"  record {path}")
        return 0


def write_demo_records(cfg, summary: dict, record_dir: str | None, *, run_s: float, total_s: float,
                       load_start) -> list[Path]:
    """The demo's result record, as ``out_dir/record.json`` (if the run has an ``out_dir``) and as a new
    ``record_dir/demo.<UTC time>.json`` (if given): what it measured, with config, command, code and machine."""
    from ..bench.record import make_record, new_record_path, write_record
    from ..config import to_dict

    keep = ("test_before", "test_after", "step", "forwards", "train_time_s", "peak_rss_bytes",
            "trainable_parameters", "history", "train_examples", "head_init")
    results = {**{k: summary[k] for k in keep if k in summary}, "run_time_s": run_s, "total_time_s": total_s,
               "eval_and_load_time_s": run_s - summary["train_time_s"],
               "load_avg": {"start": list(load_start), "end": list(os.getloadavg())}}
    rec = make_record("demo", to_dict(cfg), results)
    paths = []
    if cfg.out_dir:
        path = Path(cfg.out_dir) / "record.json"
        if path.exists():  # run() refuses a used out_dir, so this is a file someone put there: keep it
            path = new_record_path(cfg.out_dir, "record")
        paths.append(write_record(path, rec))
    if record_dir:
        paths.append(write_record(new_record_path(record_dir, "demo"), rec))
    return paths


def register(subparsers) -> None:
    from .common import add_command
    from .train import train_config_cls

    add_command(subparsers, "demo", Demo, __doc__, config_cls=train_config_cls)
