"""Language-model fine-tuning: the ``forwardonly train`` run, its configuration and the seed-log replay.

* :mod:`forwardonly.lm.config`: :class:`TrainConfig` and its sections (model, scheme, optim, task);
* :mod:`forwardonly.lm.train`: :func:`run`, the training loop read top to bottom, and
  :func:`replay_seedlog`.

Example::

    from forwardonly.config import load_config
    from forwardonly.lm import TrainConfig, run

    # a shipped config copied out: forwardonly configs cp lm/sentiment-smollm2-zo-lora run.yaml
    cfg = load_config(TrainConfig, "run.yaml", ["steps=50"])
    summary = run(cfg)
"""

from .config import ModelConfig, OptimConfig, SchemeConfig, TaskConfig, TrainConfig
from .setup import replay_seedlog, setup
from .train import run

__all__ = ["ModelConfig", "OptimConfig", "SchemeConfig", "TaskConfig", "TrainConfig", "replay_seedlog", "run",
           "setup"]
