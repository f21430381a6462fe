"""Forward gradient (Baydin et al. 2022, "Gradients without Backpropagation").

``weight`` mode: draw a Gaussian tangent ``v`` for every weight from the model's
own generator, get the loss and its directional derivative ``d = grad L . v`` in
one forward-mode pass (:func:`torch.func.jvp`), and use ``g = d v`` -- an
unbiased gradient estimate whose variance grows with the parameter count.

``local`` mode (local-loss-guided, Fournier et al. 2023, "Can Forward Gradient
Match Backpropagation?"): each hidden layer has an auxiliary linear head; the
gradient of that head's cross-entropy on the layer's own output (a backward pass
through one layer) is the guess ``u_k``; one ``jvp`` from layer ``k`` to the
global loss gives ``d_k = grad_k L . u_k`` and the update is the projection
``d_k u_k / |u_k|^2``. The output layer's gradient is local and exact.

Forward mode keeps one layer's primal and tangent at a time, never a graph.

Example::

    model = ForwardGradient(64, 10, LocalConfig(algo="fg", hidden=[64], fg=FGConfig(mode="weight")))
    model.train_step(x, y)
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp

from .base import LocalModel, linear_flops, local_step, make_optimizer


class ForwardGradient(LocalModel):
    """Forward-gradient training of an MLP, by weight perturbation or guided by local losses."""

    name = "fg"

    def __init__(self, n_in, n_classes, cfg, shape=None):
        super().__init__(n_in, n_classes, cfg, shape)
        self.make_feedforward()
        self.local = cfg.fg.mode == "local"
        if self.local:
            self.heads = nn.ModuleList(nn.Linear(b, n_classes) for b in self.dims[1:])
            self.optimizers = [make_optimizer([*lay.parameters(), *head.parameters()], cfg)
                               for lay, head in zip(self.layers[:-1], self.heads)]
            self.optimizers.append(make_optimizer(self.layers[-1].parameters(), cfg))
        else:
            self.optimizers = [make_optimizer(self.parameters(), cfg)]

    def scores(self, x):
        return self.feedforward(x)

    def _tail_loss(self, k: int, h: torch.Tensor, y: torch.Tensor, weight, bias) -> torch.Tensor:
        """Global loss as a function of layer ``k``'s weights, from its (detached) input ``h``."""
        z = F.linear(h, weight, bias)
        for layer in self.layers[k + 1:]:
            z = layer(self.act(z))
        return F.cross_entropy(z, y)

    def _full_loss(self, x, y, weights, biases):
        z = x
        for j, (w, b) in enumerate(zip(weights, biases)):
            z = F.linear(z if j == 0 else self.act(z), w, b)
        return F.cross_entropy(z, y)

    def train_step(self, x, y):
        return self._local_step(x, y) if self.local else self._weight_step(x, y)

    @torch.no_grad()
    def _weight_step(self, x, y):
        ws = tuple(layer.weight for layer in self.layers)
        bs = tuple(layer.bias for layer in self.layers)
        tw = tuple(torch.randn(w.shape, generator=self.gen) for w in ws)
        tb = tuple(torch.randn(b.shape, generator=self.gen) for b in bs)
        loss, d = jvp(lambda w, b: self._full_loss(x, y, w, b), (ws, bs), (tw, tb))
        for p, t in zip((*ws, *bs), (*tw, *tb)):
            p.grad = d * t
        self.optimizers[0].step()
        self.optimizers[0].zero_grad(set_to_none=True)
        return float(loss)

    def _local_step(self, x, y):
        h, losses = x, []
        for k, (layer, head, opt) in enumerate(zip(self.layers[:-1], self.heads, self.optimizers)):
            with torch.enable_grad():
                a = self.act(layer(h))
                local = F.cross_entropy(head(a), y)
                gw, gb, *ghead = torch.autograd.grad(local, [layer.weight, layer.bias, *head.parameters()])
            with torch.no_grad():
                _, d = jvp(lambda w, b, k=k, h=h: self._tail_loss(k, h, y, w, b),
                           (layer.weight, layer.bias), (gw, gb))
                scale = d / (gw.square().sum() + gb.square().sum()).clamp_min(1e-30)
            layer.weight.grad, layer.bias.grad = scale * gw, scale * gb
            for p, g in zip(head.parameters(), ghead):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(local.detach()))
            h = a.detach()
        losses.append(local_step(self.optimizers[-1], F.cross_entropy(self.layers[-1](h), y)))
        return sum(losses) / len(losses)

    def flops_per_example(self):
        d = [*self.dims, self.n_classes]
        fwd = linear_flops(d)
        if not self.local:
            # primal pass plus the tangent pass (W dh + dW h per layer; dx = 0 at the input)
            return {"train": 3 * fwd - 2 * d[0] * d[1], "predict": fwd}
        per_layer = [2 * a * b for a, b in pairwise(d)]
        train = 0
        for k in range(len(d) - 2):
            head = 2 * d[k + 1] * self.n_classes
            tail = sum(per_layer[k + 1:])
            train += 2 * per_layer[k] + 3 * head + per_layer[k] * 2 + 3 * tail  # local grad + jvp
        train += 2 * per_layer[-1]
        return {"train": train, "predict": fwd}
