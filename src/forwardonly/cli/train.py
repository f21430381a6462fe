"""``forwardonly train``: fine-tune a language model with a zeroth-order optimizer.

``--config`` takes a YAML file or the name of a shipped config (``forwardonly configs list``);
``key=value`` overrides go anywhere on the line. Examples::

    forwardonly train --config lm/sentiment-smollm2-zo-lora
    forwardonly train --config lm/sentiment-smollm2-zo-lora optim.lr=5e-4 steps=50 out_dir=runs/a
    forwardonly train --config lm/sentiment-smollm2-zo-lora out_dir=runs/a --resume steps=400
    forwardonly train --config lm/sentiment-smollm2-zo-lora --print-config      # the resolved config
    forwardonly train --config lm/sentiment-smollm2-zo-lora --nproc 2     # distributed, via torchrun
    forwardonly train model=smollm2-135m task.name=reviews.jsonl task.template.prompt="{text} ->" \
        task.template.labels=negative,positive steps=100 out_dir=runs/reviews    # your own data
"""

from __future__ import annotations

import json

from .common import add_config_arguments


def load_train_config(path, overrides):
    from ..config import load_config
    from ..lm.config import TrainConfig
    from .common import resolve_config

    return load_config(TrainConfig, resolve_config(path), overrides)


def train_config_cls():
    from ..lm.config import TrainConfig

    return TrainConfig


def print_summary(summary: dict) -> None:
    summary = {k: v for k, v in summary.items() if k not in ("model", "tokenizer", "history", "config")}
    print(json.dumps(summary, indent=1))


class Train:
    """Fine-tune as a YAML config says (``--config``), with ``key=value`` overrides after it."""

    help = "fine-tune a language model (zeroth-order, or a first-order baseline)"

    @staticmethod
    def add_arguments(p):
        add_config_arguments(p, "TrainConfig", "config overrides, e.g. optim.lr=1e-4 steps=200 scheme.name=lora")
        p.add_argument("--resume", action="store_true",
                       help="continue the run in out_dir from its last checkpoint (from step 0 if it has none yet)")
        p.add_argument("--nproc", type=int, default=None,
                       help="processes for distributed ZO (starts torchrun; gloo on CPU, NCCL on CUDA)")

    @staticmethod
    def run(args) -> int:
        from .. import distributed
        from ..errors import UserError
        from ..lm.train import run
        from .main import show_progress

        cfg = load_train_config(args.config, args.overrides)
        if args.print_config:
            from .common import print_config

            return print_config(cfg)
        nproc = args.nproc if args.nproc is not None else cfg.nproc
        if nproc < 1:
            raise UserError(f"Invalid --nproc: {nproc} (expected a positive integer)")
        if nproc > 1:
            distributed.launch(nproc, args.argv)  # returns only inside a torchrun rank
        summary = run(cfg, resume=args.resume, progress=show_progress(args))
        if summary.get("world_size", 1) == 1 or distributed_rank() == 0:
            print_summary(summary)
        return 0


def distributed_rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def register(subparsers) -> None:
    from .common import add_command

    add_command(subparsers, "train", Train, __doc__, config_cls=train_config_cls)
