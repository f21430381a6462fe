"""Reference twin of :class:`~forwardonly.optim.ForwardGrad`: the directional derivative by backprop."""

from __future__ import annotations

import torch

from .evaluate import call_closure
from .zosgd_reference import ZOSGDReference


class ForwardGradReference(ZOSGDReference):
    """Forward-gradient SGD where ``grad L . z`` comes from ``loss.backward()``: an
    independent oracle for the forward-mode implementation (not memory-light)."""

    def __init__(self, params, lr=1e-4, **kw):
        super().__init__(params, lr=lr, **kw)

    def estimate(self, closure, step):
        params = [(i, p) for i, p, _ in self._params()]
        with torch.enable_grad():
            for _, p in params:
                p.grad = None
            losses = call_closure(closure, self.accum_steps)
            self.state["zo"]["forwards"] += len(losses)
            total = sum(losses) / len(losses)
            total.backward()
        grads = []
        for k in range(self.q):
            g = sum(float(torch.dot(p.grad.reshape(-1).double(), self.z(p, step, k, i).reshape(-1).double()))
                    for i, p in params)
            grads.append(g)
        for _, p in params:
            p.grad = None
        return float(total), grads
