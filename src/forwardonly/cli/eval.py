"""``forwardonly eval``: score a model (base, a run's checkpoint, or a replayed seed log) on a task.

Examples::

    forwardonly eval model=smollm2-135m task=sentiment          # model=X is short for model.name=X
    forwardonly eval model=smollm2-135m task=strategyqa --split validation task.max_test=50
    forwardonly eval --run runs/a                       # the run's final checkpoint, its config
    forwardonly eval --seedlog runs/a/seedlog.json task=sentiment   # rebuild from the seed log
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .common import add_config_arguments


class Eval:
    help = "evaluate a model, a finished run or a seed log on a task split"

    @staticmethod
    def add_arguments(p):
        add_config_arguments(p, "TrainConfig, of which model, scheme and task are used", "config overrides")
        p.add_argument("--run", help="a run's out_dir: evaluate its checkpoint with its config")
        p.add_argument("--seedlog", help="rebuild the fine-tuned model from this seed log, then evaluate")
        p.add_argument("--split", default=None, help="split to score (default: the config's task.test_split)")

    @staticmethod
    def run(args) -> int:
        import torch

        from .. import checkpoint
        from ..config import load_config
        from ..lm.config import TrainConfig
        from ..lm.holders import Holder
        from ..lm.setup import replay_seedlog, setup
        from ..tasks import evaluate, task_for_run
        from .common import print_config, resolve_config
        from .main import show_progress

        base = None
        if args.run:
            base = read_run_config(Path(args.run))
        cfg = load_config(TrainConfig, resolve_config(args.config), args.overrides, base=base)
        if args.print_config:
            return print_config(cfg)
        split = args.split or cfg.task.test_split
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        model_name = cfg.model.name
        if args.seedlog:
            model, tok = replay_seedlog(args.seedlog, device=cfg.device)
            # the model the run was made on, not the config's default
            model_name = checkpoint.SeedLog.load(args.seedlog).model.get("name", model_name)
            task = task_for_run(cfg.task, [split])
            holder = None
        else:
            holder = Holder(cfg.model, None, cfg.device)
            model, tok, task, _, _ = setup(cfg, logging.getLogger("forwardonly").info, holder, needs=[split])
            holder.attach(model)  # quantized, streamed, mixed precision: as the run held it
            if args.run:
                checkpoint.load_trainable(Path(args.run) / "checkpoint", model, write=holder.load_trainable)
        metrics = evaluate(model, tok, task, split, batch_size=cfg.eval_batch_size, max_examples=cfg.task.max_test,
                           device=cfg.device, progress=show_progress(args),
                           max_length=cfg.task.max_length)
        if holder is not None:
            holder.detach()
        print(json.dumps({"model": model_name, "task": task.name, "split": split, **metrics}, indent=1))
        return 0


def read_run_config(run: Path) -> dict:
    """A run directory's ``config.json`` (a :class:`UserError` naming the file if it is missing or corrupt)."""
    from ..errors import UserError
    from ..io import read_json_object

    path = run / "config.json"
    if not path.is_file():
        raise UserError(f"{run} is not a run directory (no config.json)")
    return read_json_object(path, "run config")


def register(subparsers) -> None:
    from .common import add_command
    from .train import train_config_cls

    add_command(subparsers, "eval", Eval, __doc__, config_cls=train_config_cls)
