"""Reference twin of :class:`~forwardonly.optim.ES`: OpenAI-style antithetic ES, written out."""

from __future__ import annotations

from .es import centered_ranks
from .reference import _ReferenceZO


class ESReference(_ReferenceZO):
    """Antithetic ES as published: every member ``w +- sigma z_k`` is made from a saved copy of ``w`` (no
    in-place perturb-and-restore), the ``2N`` losses ranked, and each direction's shaped weight added to
    the weights in probe order. Same arguments as :class:`~forwardonly.optim.ES`."""

    def __init__(self, params, lr=1e-4, population=None, sigma=None, weight_decay=0.0, q=None, eps=None,
                 direction="gaussian", **zo):
        n = population if population is not None else q if q is not None else 8
        s = sigma if sigma is not None else eps if eps is not None else 1e-3
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay), eps=s, q=n, direction=direction, **zo)

    def _at(self, step, probe, scale, saved):
        for (i, p, _), w in zip(self._params(), saved):
            p.copy_(w.add(self.z(p, step, probe, i), alpha=scale))

    def estimate(self, closure, step):
        saved = [p.detach().clone() for _, p, _ in self._params()]
        plus, minus = [], []
        for k in range(self.q):
            self._at(step, k, self.eps, saved)
            plus.append(self._loss(closure))
            self._at(step, k, -self.eps, saved)
            minus.append(self._loss(closure))
        for (_, p, _), w in zip(self._params(), saved):
            p.copy_(w)
        u = centered_ranks(plus + minus)
        self.shaped = [(u[k] - u[self.q + k]) / (2 * self.q * self.eps) for k in range(self.q)]
        return sum(plus + minus) / (2 * self.q), [(a - b) / (2 * self.eps) for a, b in zip(plus, minus)]

    def update(self, step, grads, closure):
        for i, p, group in self._params():
            lr, wd = group["lr"], group["weight_decay"]
            if lr == 0.0:
                continue
            if wd:
                p.mul_(1 - lr * wd)
            for k, c in enumerate(self.shaped):
                p.add_(self.z(p, step, k, i), alpha=-lr * c)
