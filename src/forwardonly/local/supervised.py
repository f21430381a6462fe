"""Mono-Forward and the backprop baseline: the same MLP, local versus global credit.

* :class:`MonoForward` -- Gong et al. 2025, "Mono-Forward: Backpropagation-Free
  Algorithm for Efficient Neural Network Training Harnessing Local Errors". Each
  layer ``a_k = f(W_k a_{k-1})`` has its own projection ``M_k`` (classes x width);
  the layer and its projection minimise ``cross_entropy(a_k M_k^T, y)`` on a
  detached input. The prediction is the last layer's projection. With ``conv``
  each conv block is such a layer too, its projection reading the flattened map.
* :class:`Backprop` -- the same conv blocks and hidden layers plus a linear output,
  trained end to end with cross-entropy: the baseline every method is measured against.

Example::

    cfg = LocalConfig(algo="mf", hidden=[64, 64])
    model = MonoForward(64, 10, cfg)
    loss = model.train_step(x, y)
"""

from __future__ import annotations

from itertools import pairwise

import torch.nn.functional as F
from torch import nn

from .base import LocalModel, linear_flops, local_step, make_optimizer, numel


class MonoForward(LocalModel):
    """Mono-Forward: per-layer cross-entropy through a per-layer projection (no output layer)."""

    name = "mf"

    def __init__(self, n_in, n_classes, cfg, shape=None):
        super().__init__(n_in, n_classes, cfg, shape)
        d = self.dims
        self.convs = self.make_convs()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(d))
        widths = [*(numel(s) for s in self.conv_out), *d[1:]]
        self.proj = nn.ModuleList(nn.Linear(w, n_classes, bias=False) for w in widths)
        self.optimizers = [make_optimizer([*lay.parameters(), *p.parameters()], cfg)
                           for lay, p in zip([*self.convs, *self.layers], self.proj)]

    def train_step(self, x, y):
        h, losses = self.image(x), []
        for k, (layer, proj, opt) in enumerate(zip([*self.convs, *self.layers], self.proj, self.optimizers)):
            if k == len(self.convs) and self.convs:
                h = h.flatten(1)
            a = self.act(layer(h))  # h is detached: this graph spans one layer
            losses.append(local_step(opt, F.cross_entropy(proj(a.flatten(1)), y)))
            h = a.detach()
        return sum(losses) / len(losses)

    def scores(self, x):
        x = self.image(x)
        for conv in self.convs:
            x = self.act(conv(x))
        x = x.flatten(1)
        for layer in self.layers:
            x = self.act(layer(x))
        return self.proj[-1](x)

    def flops_per_example(self):
        fwd = linear_flops(self.dims) + sum(self.conv_flops())
        widths = [*(numel(s) for s in self.conv_out), *self.dims[1:]]
        heads = sum(2 * w * self.n_classes for w in widths)
        # forward + weight gradient of every layer and head, plus the head's input gradient
        return {"train": 2 * fwd + 3 * heads, "predict": fwd + 2 * widths[-1] * self.n_classes}


class Backprop(LocalModel):
    """End-to-end backpropagation through ``hidden`` layers and a linear output."""

    name = "bp"

    def __init__(self, n_in, n_classes, cfg, shape=None):
        super().__init__(n_in, n_classes, cfg, shape)
        self.make_feedforward()
        self.optimizers = [make_optimizer(self.parameters(), cfg)]

    def scores(self, x):
        return self.feedforward(x)

    def train_step(self, x, y):
        return local_step(self.optimizers[0], F.cross_entropy(self.scores(x), y))

    def flops_per_example(self):
        d = [*self.dims, self.n_classes]
        per_layer = [*self.conv_flops(), *(2 * a * b for a, b in pairwise(d))]
        fwd = sum(per_layer)
        # forward, weight gradients, and input gradients of every layer but the first
        return {"train": 3 * fwd - per_layer[0], "predict": fwd}
