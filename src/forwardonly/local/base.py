"""What every forward-only method shares: layers, optimizers, evaluation, state.

A method is an :class:`torch.nn.Module` subclass of :class:`LocalModel` that
owns its optimizers and implements :meth:`LocalModel.train_step`. Memory rule
for the local methods: a layer's autograd graph is built, used and freed before
the next layer runs, and the next layer sees a detached input, so no layer keeps
another layer's activations alive. :func:`local_step` is that one-layer step.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .config import LocalConfig

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


def make_optimizer(params, cfg: LocalConfig, lr: float | None = None) -> torch.optim.Optimizer:
    params = list(params)
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


def local_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """Backward through one layer's graph, step, and free the gradients at once."""
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)  # grads of one layer at a time, never of the whole net
    return float(loss.detach())


def linear_flops(dims: list[int]) -> int:
    """Multiply-adds x2 of one forward pass through consecutive linear layers."""
    return sum(2 * a * b for a, b in pairwise(dims))


class LocalModel(nn.Module):
    """Base class: an MLP ``n_in -> hidden... -> (n_classes)`` trained by its own rule.

    Args:
        n_in: input features; n_classes: classes; cfg: the run's :class:`LocalConfig`.

    Subclasses set ``self.optimizers`` (a list) and implement ``train_step`` and
    ``scores``; ``gen`` is the method's own random generator (negative labels,
    tangents), seeded from ``cfg.seed`` and saved with checkpoints so that a
    resumed run repeats an uninterrupted one exactly.
    """

    name = "base"

    def __init__(self, n_in: int, n_classes: int, cfg: LocalConfig):
        super().__init__()
        self.n_in, self.n_classes, self.cfg = n_in, n_classes, cfg
        self.act = ACTIVATIONS[cfg.activation]
        self.gen = torch.Generator().manual_seed(cfg.seed + 7919)
        self.optimizers: list[torch.optim.Optimizer] = []

    @property
    def dims(self) -> list[int]:
        return [self.n_in, *self.cfg.hidden]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One update on a batch; returns the (mean local) loss."""
        raise NotImplementedError

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(batch, n_classes)``; argmax is the prediction."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Called after each training epoch (closed-form solves live here)."""

    def flops_per_example(self) -> dict:
        """Analytic FLOPs (2 x multiply-adds of the matmuls) per training and test example."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> dict:
        was = self.training
        self.eval()
        correct = sum(
            int((self.scores(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
            for i in range(0, len(y), batch_size)
        )
        self.train(was)
        return {"acc": correct / max(1, len(y))}

    def optim_state(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers], "gen": self.gen.get_state()}

    def load_optim_state(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)
        self.gen.set_state(state["gen"])


def one_hot(y: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(y, n).to(torch.float32)
