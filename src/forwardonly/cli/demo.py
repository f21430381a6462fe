"""``forwardonly demo``: watch a pretrained language model learn a task with forward passes only.

Fetches SmolLM2-135M into the model cache if needed, scores it on the held-out
test split of the shipped sentiment task, fine-tunes it with zeroth-order SGD
(the packaged ``configs/demo.yaml``), scores it again, and prints both
accuracies, the time and the peak memory. Overrides work as for ``train``::

    forwardonly demo
    forwardonly demo steps=40                 # a shorter run
    forwardonly demo out_dir=runs/my-demo     # where the run and its record go

Every demo writes its result record, ``record.json`` (accuracy before and after,
forward passes, training, evaluation and total time, whole-process peak RSS, the
load average of the machine, the config, the command, commit and versions), into
its ``out_dir`` beside the checkpoint and the seed log; without ``out_dir`` that is
a new ``runs/demo/<UTC time>`` folder, so no earlier demo is overwritten.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


class Demo:
    help = "fine-tune SmolLM2-135M on sentiment with ZO-SGD on this machine, before/after accuracy"

    @staticmethod
    def add_arguments(p):
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the demo config")

    @staticmethod
    def run(args) -> int:
        import dataclasses

        from ..lm.train import run
        from ..models import zoo
        from .train import load_train_config

        total = time.perf_counter()
        load_start = os.getloadavg()
        cfg = load_train_config(CONFIG, args.overrides)
        if cfg.out_dir is None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            cfg = dataclasses.replace(cfg, out_dir=str(Path("runs") / "demo" / stamp))
        if cfg.model.name in zoo.ZOO and zoo.cached(cfg.model.name) is None:
            print(f"fetching {cfg.model.name} into {zoo.model_dir(cfg.model.name)} (once) ...", file=sys.stderr)
            zoo.fetch(cfg.model.name, log=lambda m: print(m, file=sys.stderr))
        start = time.perf_counter()
        s = run(cfg, progress=not args.no_progress and sys.stderr.isatty())
        wall = time.perf_counter() - start
        before, after = s["test_before"], s["test_after"]
        metric = "accuracy" if "accuracy" in after else "f1"
        gain = 100 * (after[metric] - before[metric])
        rss = s["peak_rss_bytes"]
        print(f"\nforwardonly demo: {cfg.model.name} on {cfg.task.name} ({cfg.task.test_split}, {after['n']} "
              f"held-out examples), {cfg.optim.name} on scheme {cfg.scheme.name}, {s['trainable_parameters']:,} "
              f"trainable parameters")
        print(f"  {metric} before  {100 * before[metric]:6.2f} %")
        print(f"  {metric} after   {100 * after[metric]:6.2f} %   ({gain:+.2f} points)")
        print(f"  steps {s['step']}, forward passes {s['forwards']}, training {s['train_time_s']:.0f} s, "
              f"total {wall:.0f} s")
        print(f"  peak memory (RSS) {rss / 2**20:.0f} MiB" if rss else "  peak memory: unavailable here")
        path = write_demo_record(cfg, s, argv=getattr(args, "argv", sys.argv[1:]), run_s=wall,
                                 total_s=time.perf_counter() - total, load_start=load_start)
        print(f"  record {path}")
        return 0


def write_demo_record(cfg, summary: dict, *, argv: list[str], run_s: float, total_s: float, load_start) -> Path:
    """``out_dir/record.json``: what the demo measured, with the config, command, code and machine."""
    from ..bench.record import make_record, write_record
    from ..config import to_dict

    keep = ("test_before", "test_after", "step", "forwards", "train_time_s", "peak_rss_bytes",
            "trainable_parameters", "history", "train_examples")
    results = {k: summary[k] for k in keep if k in summary}
    results.update(run_time_s=round(run_s, 1), total_time_s=round(total_s, 1),
                   eval_and_load_time_s=round(run_s - summary["train_time_s"], 1),
                   load_avg={"start": list(load_start), "end": list(os.getloadavg())})
    command = {"argv": ["forwardonly", *argv], "cwd": os.getcwd(), "python": sys.executable}
    rec = make_record("demo", to_dict(cfg), results, command=command, status="ok")
    path = Path(cfg.out_dir) / "record.json"
    if path.exists():  # run() refuses a used out_dir, so this is a file someone put there: keep it
        path = Path(cfg.out_dir) / f"record.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    write_record(path, rec)
    return path


def register(subparsers) -> None:
    import argparse

    p = subparsers.add_parser("demo", help=Demo.help, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    Demo.add_arguments(p)
    p.set_defaults(func=Demo.run)
