"""``forwardonly eval``: score a model (base, a run's checkpoint, or a replayed seed log) on a task.

Examples::

    forwardonly eval model.name=smollm2-135m task.name=sentiment
    forwardonly eval --run runs/a                       # the run's final checkpoint, its config
    forwardonly eval --seedlog runs/a/seedlog.json task.name=sentiment   # rebuild from the seed log
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class Eval:
    help = "evaluate a model, a finished run or a seed log on a task split"

    @staticmethod
    def add_arguments(p):
        p.add_argument("--config", help="YAML config (a TrainConfig); model, scheme and task are used")
        p.add_argument("--run", help="a run's out_dir: evaluate its checkpoint with its config")
        p.add_argument("--seedlog", help="rebuild the fine-tuned model from this seed log, then evaluate")
        p.add_argument("--split", default=None, help="split to score (default: the config's task.test_split)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    @staticmethod
    def run(args) -> int:
        import torch

        from .. import checkpoint
        from ..config import load_config
        from ..errors import UserError
        from ..tasks import evaluate, get_task
        from ..lm.holders import Holder
        from ..lm.train import replay_seedlog, setup
        from ..lm.config import TrainConfig

        base = None
        if args.run:
            cfg_path = Path(args.run) / "config.json"
            if not cfg_path.is_file():
                raise UserError(f"{args.run} is not a run directory (no config.json)")
            base = json.loads(cfg_path.read_text())
        cfg = load_config(TrainConfig, args.config, args.overrides, base=base)
        split = args.split or cfg.task.test_split
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if args.seedlog:
            model, tok = replay_seedlog(args.seedlog, device=cfg.device)
            task = get_task(cfg.task.name)
            holder = None
        else:
            holder = Holder(cfg.model, None, cfg.device)
            model, tok, task, _, _ = setup(cfg, lambda m: print(m, file=sys.stderr), holder)
            holder.attach(model)  # quantized, streamed, mixed precision: as the run held it
            if args.run:
                checkpoint.load_trainable(Path(args.run) / "checkpoint", model, write=holder.load_trainable)
        metrics = evaluate(model, tok, task, split, batch_size=cfg.eval_batch_size, max_examples=cfg.task.max_test,
                           device=cfg.device, progress=not args.no_progress and sys.stderr.isatty(),
                           max_length=cfg.task.max_length)
        if holder is not None:
            holder.detach()
        print(json.dumps({"model": cfg.model.name, "task": task.name, "split": split, **metrics}, indent=1))
        return 0


def register(subparsers) -> None:
    import argparse

    p = subparsers.add_parser("eval", help=Eval.help, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    Eval.add_arguments(p)
    p.set_defaults(func=Eval.run)
