"""Cascaded Forward (Zhao et al. 2023, "The Cascaded Forward Algorithm for Neural Network Training").

A cascade of blocks, each with its own predictor; the prediction is the sum of
the predictors' outputs. Here the blocks are random, frozen ``Linear + f``
layers (the paper's "Rand-CaFo"), and each predictor is trained on its block's
detached output, either

* ``closed_form``: ridge regression onto one-hot targets,
  ``W = (H^T H + lambda I)^-1 H^T Y``, from sufficient statistics streamed over
  the epoch (memory: width x width per block, never the whole data set), or
* ``ce``: cross-entropy by gradient, each predictor on its own.

Example::

    model = CaFo(64, 10, LocalConfig(algo="cafo", hidden=[256, 256]))
    for x, y in batches: model.train_step(x, y)
    model.end_epoch()   # closed-form solve
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .base import LocalModel, linear_flops, local_step, make_optimizer, one_hot


class CaFo(LocalModel):
    """Random frozen blocks, one predictor per block, predictions summed."""

    name = "cafo"

    def __init__(self, n_in, n_classes, cfg):
        super().__init__(n_in, n_classes, cfg)
        d = self.dims
        self.blocks = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(d))
        self.blocks.requires_grad_(False)
        self.predictors = nn.ModuleList(nn.Linear(b, n_classes) for b in d[1:])
        self.closed_form = cfg.cafo.predictor == "closed_form"
        if self.closed_form:
            self.predictors.requires_grad_(False)
            for p in self.predictors:
                nn.init.zeros_(p.weight)
                nn.init.zeros_(p.bias)
            self._stats: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.predictors)
        else:
            self.optimizers = [make_optimizer(p.parameters(), cfg) for p in self.predictors]

    @torch.no_grad()
    def _block_outputs(self, x: torch.Tensor):
        for block in self.blocks:
            x = self.act(block(x))
            yield x

    def train_step(self, x, y):
        losses = []
        for k, h in enumerate(self._block_outputs(x)):
            if self.closed_form:
                hb = torch.cat([h, torch.ones(len(h), 1)], 1).double()  # bias as a constant feature
                gram, cross = hb.T @ hb, hb.T @ one_hot(y, self.n_classes).double()
                s = self._stats[k]
                self._stats[k] = (gram, cross) if s is None else (s[0] + gram, s[1] + cross)
                with torch.no_grad():
                    losses.append(float(F.mse_loss(self.predictors[k](h), one_hot(y, self.n_classes))))
            else:
                losses.append(local_step(self.optimizers[k], F.cross_entropy(self.predictors[k](h), y)))
        return sum(losses) / len(losses)

    @torch.no_grad()
    def end_epoch(self):
        if not self.closed_form:
            return
        for pred, stats in zip(self.predictors, self._stats):
            if stats is None:
                continue
            gram, cross = stats
            reg = self.cfg.cafo.ridge * torch.eye(len(gram), dtype=gram.dtype)
            reg[-1, -1] = 0  # the bias is not shrunk
            sol = torch.linalg.solve(gram + reg, cross).float()
            pred.weight.copy_(sol[:-1].T)
            pred.bias.copy_(sol[-1])
        self._stats = [None] * len(self.predictors)

    @torch.no_grad()
    def scores(self, x):
        total = 0
        for pred, h in zip(self.predictors, self._block_outputs(x)):
            out = pred(h)
            total = total + (out if self.closed_form else F.softmax(out, 1))
        return total

    def flops_per_example(self):
        fwd = linear_flops(self.dims)
        heads = sum(2 * b * self.n_classes for b in self.dims[1:])
        if self.closed_form:
            stats = sum(2 * (b + 1) * (b + 1 + self.n_classes) for b in self.dims[1:])
            return {"train": fwd + heads + stats, "predict": fwd + heads}
        return {"train": fwd + 2 * heads, "predict": fwd + heads}
