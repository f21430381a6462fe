"""tpSGD: target projection with an arbitrary layer-local loss, for dense and conv layers.

Lomnitz, Daniels, Zhang & Piacentino 2022, "Learning with Local Gradients at the Edge".
Hidden layer ``k`` (a conv block or a dense layer) computes ``a_k = f(W_k h_{k-1})`` from a
detached input and is given the target ``t_k = P_k onehot(y)``, a fixed random projection
of the label shaped like ``a_k`` (a conv block gets a whole C x H x W map). It minimises
``loss(a_k, t_k)`` with its own optimizer; the output layer minimises cross-entropy.

DRTP (:class:`forwardonly.local.feedback.DRTP`) is the special case of the linear loss
``-<a_k, t_k>``; here the loss is any layer-local one (``tp.loss``: mse, l1, smooth_l1).
Every layer is updated right after its own forward pass, so one layer's graph is alive
at a time and the backward pass never leaves the layer.

Example::

    model = TargetProjection(64, 10, LocalConfig(algo="tpsgd", hidden=[64, 64], activation="tanh"))
    model.train_step(x, y)
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F

from .base import LocalModel, local_step, make_optimizer, numel, one_hot

LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}


class TargetProjection(LocalModel):
    """tpSGD: each hidden layer regresses onto a fixed random projection of the label."""

    name = "tpsgd"

    def __init__(self, n_in, n_classes, cfg, shape=None):
        super().__init__(n_in, n_classes, cfg, shape)
        self.make_feedforward()
        scale = cfg.tp.scale
        outs = [*self.conv_out, *((w,) for w in cfg.hidden)]
        self.per_channel = cfg.tp.conv_target == "channel"
        for k, out in enumerate(outs):
            width = out[0] if self.per_channel and len(out) == 3 else numel(out)
            p = (torch.rand(n_classes, width) * 2 - 1) * scale
            self.register_buffer(f"projection_{k}", p)  # fixed: saved with the weights, never trained
        self.out_shapes = outs
        self.optimizers = [make_optimizer(m.parameters(), cfg) for m in [*self.convs, *self.layers]]

    def target(self, k: int, y: torch.Tensor) -> torch.Tensor:
        """Layer ``k``'s target for labels ``y``: ``onehot(y) P_k``, shaped like the layer's output."""
        t = one_hot(y, self.n_classes) @ getattr(self, f"projection_{k}")
        shape = self.out_shapes[k]
        if self.per_channel and len(shape) == 3:  # one value per channel, at every pixel
            return t[:, :, None, None].expand(len(y), *shape)
        return t.view(len(y), *shape)

    def _hidden(self):
        return [*self.convs, *self.layers[:-1]]

    def train_step(self, x, y):
        h, losses = self.image(x), []
        loss_fn = LOSSES[self.cfg.tp.loss]
        for k, layer in enumerate(self._hidden()):
            if k == len(self.convs) and self.convs:
                h = h.flatten(1)
            a = self.act(layer(h))  # h is detached: this graph spans one layer
            losses.append(local_step(self.optimizers[k], loss_fn(a, self.target(k, y))))
            h = a.detach()
        h = h.flatten(1)
        losses.append(local_step(self.optimizers[-1], F.cross_entropy(self.layers[-1](h), y)))
        return sum(losses) / len(losses)

    def scores(self, x):
        return self.feedforward(x)

    def flops_per_example(self):
        d = [*self.dims, self.n_classes]
        fwd = sum(self.conv_flops()) + sum(2 * a * b for a, b in pairwise(d))
        targets = sum(2 * self.n_classes * (s[0] if self.per_channel and len(s) == 3 else numel(s))
                      for s in self.out_shapes)
        # forward and weight gradient of every layer (no input gradients), and the targets
        return {"train": 2 * fwd + targets, "predict": fwd}
