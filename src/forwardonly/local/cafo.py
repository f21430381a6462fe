"""Cascaded Forward (Zhao et al. 2023, "The Cascaded Forward Algorithm for Neural Network Training").

A cascade of blocks, each with its own predictor; the prediction is the sum of
the predictors' outputs (their softmax for ``ce``). Blocks are the conv blocks of
``conv`` (3x3 conv, 2x2 max-pool, as in the paper's CIFAR networks) and then
``Linear + f`` layers for ``hidden``. Either

* ``blocks=random``: frozen at initialisation (the paper's "Rand-CaFo"), or
* ``blocks=dfa`` (the paper's "DFA-CaFo"): block ``k`` learns from its own
  predictor's error ``e_k`` (``softmax - onehot`` for ``ce``, ``output - onehot``
  for ``mse``), sent to the block's output through a fixed random matrix ``B_k``;
  the gradient stays inside the block, whose graph is freed before the next runs.

Each predictor is trained on its block's detached output, either

* ``closed_form``: ridge regression onto one-hot targets,
  ``W = (H^T H + lambda I)^-1 H^T Y``, from sufficient statistics streamed over
  the epoch (memory: width x width per block, never the whole data set; random
  blocks only), or
* ``ce`` / ``mse``: cross-entropy or squared error by gradient, each on its own.

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

from .base import LocalModel, linear_flops, local_step, make_optimizer, numel, one_hot


class CaFo(LocalModel):
    """Blocks in a cascade (random and frozen, or trained by DFA), one predictor per block, predictions summed."""

    name = "cafo"

    def __init__(self, n_in, n_classes, cfg, shape=None):
        super().__init__(n_in, n_classes, cfg, shape)
        d = self.dims
        self.blocks = nn.ModuleList([*self.make_convs(), *(nn.Linear(a, b) for a, b in pairwise(d))])
        widths = [*(numel(s) for s in self.conv_out), *d[1:]]
        self.widths = widths
        self.predictors = nn.ModuleList(nn.Linear(w, n_classes) for w in widths)
        self.closed_form = cfg.cafo.predictor == "closed_form"
        self.dfa = cfg.cafo.blocks == "dfa"
        if self.dfa:
            for k, w in enumerate(widths):
                b = (torch.rand(n_classes, w) * 2 - 1) * cfg.feedback.scale / n_classes ** 0.5
                self.register_buffer(f"feedback_{k}", b)  # fixed: saved with the weights, never trained
            self.block_optimizers = [make_optimizer(b.parameters(), cfg) for b in self.blocks]
        else:
            self.blocks.requires_grad_(False)
            self.block_optimizers = []
        if self.closed_form:
            self.predictors.requires_grad_(False)
            for p in self.predictors:
                nn.init.zeros_(p.weight)
                nn.init.zeros_(p.bias)
            self._stats: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.predictors)
        else:
            self.optimizers = [make_optimizer(p.parameters(), cfg) for p in self.predictors]
        self.optimizers = [*self.optimizers, *self.block_optimizers]  # one list: saved and decayed together

    def _block(self, k: int, x: torch.Tensor) -> torch.Tensor:
        if k == len(self.conv_out) and self.conv_out:
            x = x.flatten(1)
        return self.act(self.blocks[k](x))

    @torch.no_grad()
    def _block_outputs(self, x: torch.Tensor):
        x = self.image(x)
        for k in range(len(self.blocks)):
            x = self._block(k, x)
            yield x.flatten(1)

    def _predictor_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.cafo.predictor == "mse":
            return F.mse_loss(out, one_hot(y, self.n_classes), reduction="sum") / len(y)
        return F.cross_entropy(out, y)

    def _error(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The predictor's output error, per example: what DFA sends back to the block."""
        target = one_hot(y, self.n_classes)
        return (out if self.cfg.cafo.predictor == "mse" else F.softmax(out, 1)) - target

    def _dfa_step(self, x, y):
        h, losses = self.image(x), []
        for k in range(len(self.blocks)):
            with torch.enable_grad():
                out = self._block(k, h)  # h detached: this graph spans one block
            flat = out.detach().flatten(1)
            pred_out = self.predictors[k](flat)
            err = self._error(pred_out.detach(), y) / len(y)
            out.backward((err @ getattr(self, f"feedback_{k}")).view_as(out))
            self.block_optimizers[k].step()
            self.block_optimizers[k].zero_grad(set_to_none=True)
            losses.append(local_step(self.optimizers[k], self._predictor_loss(pred_out, y)))
            h = out.detach()
        return sum(losses) / len(losses)

    def train_step(self, x, y):
        if self.dfa:
            return self._dfa_step(x, y)
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
                losses.append(local_step(self.optimizers[k], self._predictor_loss(self.predictors[k](h), y)))
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
            total = total + (F.softmax(out, 1) if self.cfg.cafo.predictor == "ce" else out)
        return total

    def flops_per_example(self):
        fwd = linear_flops(self.dims) + sum(self.conv_flops())
        heads = sum(2 * w * self.n_classes for w in self.widths)
        if self.closed_form:
            stats = sum(2 * (w + 1) * (w + 1 + self.n_classes) for w in self.widths)
            return {"train": fwd + heads + stats, "predict": fwd + heads}
        if self.dfa:  # blocks: forward + weight gradient, and the feedback projection of the error
            return {"train": 2 * fwd + 2 * heads + heads, "predict": fwd + heads}
        return {"train": fwd + 2 * heads, "predict": fwd + heads}
