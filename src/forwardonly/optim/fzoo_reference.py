"""Reference twin of :class:`~forwardonly.optim.FZOO`: the paper's update, line by line."""

from __future__ import annotations

import statistics

from .zosgd_reference import ZOSGDReference


class FZOOReference(ZOSGDReference):
    """FZOO as published: ``l_0``, then ``l_k`` at ``w + eps u_k`` by in-place perturbation, ``sigma`` the
    sample standard deviation of the ``l_k`` themselves, and ZO-SGD's update on ``g_k / sigma``. Same
    arguments as :class:`~forwardonly.optim.FZOO`."""

    def __init__(self, params, lr=1e-6, q=8, two_sided=False, **kw):
        super().__init__(params, lr=lr, q=q, two_sided=False, **kw)

    def estimate(self, closure, step):
        l0 = self._loss(closure)
        losses = []
        for k in range(self.q):
            self._perturb(step, k, self.eps)
            losses.append(self._loss(closure))
            self._perturb(step, k, -self.eps)
        sigma = statistics.stdev(losses)
        if sigma == 0.0:
            return l0, [0.0] * self.q
        return l0, [(lk - l0) / self.eps / sigma for lk in losses]
