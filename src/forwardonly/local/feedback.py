"""Direct Feedback Alignment and Direct Random Target Projection, memory-honest.

* DFA (Noekland 2016): hidden layer ``k`` gets ``delta_k = (e B_k) * f'(a_k)`` with
  ``e = softmax(logits) - onehot(y)`` the output error and ``B_k`` a fixed random
  matrix.
* DRTP (Frenkel et al. 2021): the same with the target only, ``-onehot(y) B_k``,
  so every layer is updated right after its own forward pass.

Common implementations swap gradients inside one autograd graph over the whole
network, which keeps every activation alive and saves nothing. Here each layer's
graph covers that layer alone and is freed before the next layer runs. DFA needs
the output error before any hidden update, so it makes a cheap first pass under
``no_grad`` (keeping one activation at a time) to get ``e``, then a second pass
that recomputes each layer with its pre-update weights and updates it at once:
the exact DFA update for one extra forward pass, with one layer's activations
alive instead of all of them.

Example::

    model = DFA(64, 10, LocalConfig(algo="dfa", hidden=[64, 64]))
    model.train_step(x, y)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LocalModel, linear_flops, local_step, make_optimizer, one_hot


class _RandomFeedback(LocalModel):
    """The layers, fixed feedback matrices and update pass of DFA and DRTP; each supplies :meth:`signal`."""

    train_passes = 2
    """A training step's cost in forward passes: the update pass and its one-layer weight gradients."""

    def __init__(self, n_in, n_classes, cfg, shape=None):
        super().__init__(n_in, n_classes, cfg, shape)
        self.make_feedforward()
        for k, width in enumerate(self.dims[1:]):
            b = (torch.rand(n_classes, width) * 2 - 1) * cfg.feedback.scale / n_classes ** 0.5
            self.register_buffer(f"feedback_{k}", b)  # fixed: saved with the weights, never trained
        self.optimizers = [make_optimizer(layer.parameters(), cfg) for layer in self.layers]

    def feedback(self, k: int) -> torch.Tensor:
        return getattr(self, f"feedback_{k}")

    def scores(self, x):
        return self.feedforward(x)

    def _hidden_update(self, k: int, h: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        """Forward layer ``k`` on detached ``h``, update it from ``signal @ B_k``, return its output."""
        with torch.enable_grad():
            out = self.act(self.layers[k](h))
            out.backward(signal @ self.feedback(k))  # autograd applies f'(a_k) within this layer only
        self.optimizers[k].step()
        self.optimizers[k].zero_grad(set_to_none=True)
        return out.detach()  # computed with the pre-update weights, as in the textbook rule

    def _output_update(self, h: torch.Tensor, y: torch.Tensor) -> float:
        return local_step(self.optimizers[-1], F.cross_entropy(self.layers[-1](h), y))

    def _feedback_flops(self) -> int:
        return sum(2 * self.n_classes * w for w in self.dims[1:])

    def signal(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What every hidden layer's update projects through its feedback matrix, for batch ``(x, y)``."""
        raise NotImplementedError

    def train_step(self, x, y):
        signal = self.signal(x, y)
        h = x
        for k in range(len(self.layers) - 1):
            h = self._hidden_update(k, h, signal)
        return self._output_update(h, y)

    def flops_per_example(self):
        fwd = linear_flops([*self.dims, self.n_classes])
        return {"train": self.train_passes * fwd + self._feedback_flops(), "predict": fwd}


class DFA(_RandomFeedback):
    """Direct Feedback Alignment with a recomputing second pass (one layer alive at a time)."""

    name = "dfa"
    train_passes = 3  # and the no-grad pass for the output error

    @torch.no_grad()
    def signal(self, x, y):
        return (F.softmax(self.scores(x), 1) - one_hot(y, self.n_classes)) / len(y)


class DRTP(_RandomFeedback):
    """Direct Random Target Projection: each layer updated right after its forward pass."""

    name = "drtp"

    def signal(self, x, y):
        return -one_hot(y, self.n_classes) / len(y)
