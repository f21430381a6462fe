"""Reference twin of :class:`~forwardonly.optim.LOZO`: whole ``U V^T`` by matmul, LOZO-M's factor as written."""

from __future__ import annotations

import torch

from .perturb.lowrank import V_PROBE
from .perturb.seeds import direction
from .zosgd_reference import ZOSGDReference


class LOZOReference(ZOSGDReference):
    """LOZO and LOZO-M as published: matrices perturbed along ``U V^T`` (one ``torch.matmul``), MeZO's
    in-place estimate, ``W -= lr c U V^T / r``; LOZO-M's ``N`` carried to a new subspace by
    ``N V_old^T V_new / n``. ``U`` and ``V`` come from the same seeds as the fast optimizer's. Same
    arguments as :class:`~forwardonly.optim.LOZO`."""

    def __init__(self, params, lr=1e-6, rank=2, interval=50, momentum=0.0, direction="gaussian", **kw):
        super().__init__(params, lr=lr, direction=direction, **kw)
        self.rank, self.interval, self.beta = rank, interval, momentum

    def _u(self, p, step, probe, i):
        return direction((p.shape[0], self.rank), self.kind, self.seed, step, probe, -(i + 1))

    def _v(self, p, step, i):
        e = step // self.interval
        return direction((p.shape[1], self.rank), self.kind, self.seed, e, V_PROBE, -(i + 1))

    def z(self, p, step, probe, i):
        if p.dim() != 2:
            return super().z(p, step, probe, i)
        return (self._u(p, step, probe, i) @ self._v(p, step, i).t()).to(p.dtype)

    def grad_estimate(self, p, i, step, grads):
        g = super().grad_estimate(p, i, step, grads)
        return g / self.rank if p.dim() == 2 else g

    def update(self, step, grads, closure):
        if not self.beta:
            return super().update(step, grads, closure)
        for i, p, group in self._params():
            lr, wd = group["lr"], group["weight_decay"]
            if lr == 0.0:
                continue
            st = self.state[p]
            if wd:
                p.mul_(1 - lr * wd)
            if p.dim() != 2:
                g = super().grad_estimate(p, i, step, grads).float()
                st["b"] = self.beta * st.get("b", torch.zeros_like(g)) + (1 - self.beta) * g
                p.sub_((lr * st["b"]).to(p.dtype))
                continue
            v = self._v(p, step, i)
            n = st.get("n", torch.zeros(p.shape[0], self.rank))
            if "epoch" in st and st["epoch"] != step // self.interval:
                n = n @ (self._v(p, st["epoch"] * self.interval, i).t() @ v) / p.shape[1]
            cu = sum(self._u(p, step, k, i) * (gk / self.q) for k, gk in enumerate(grads))
            st["n"], st["epoch"] = self.beta * n + (1 - self.beta) * cu, step // self.interval
            p.sub_((lr * st["n"] @ v.t() / self.rank).to(p.dtype))
