"""Reference twin of :class:`~forwardonly.optim.HiZOO`: the paper's step on whole tensors, in place."""

from __future__ import annotations

import torch

from .reference import _ReferenceZO


class HiZOOReference(_ReferenceZO):
    """HiZOO as written: ``Sigma`` a whole tensor (HiZOO-L: ``R C^T / sum(R)`` rebuilt whole), the
    perturbation ``w +- eps z / sqrt(Sigma)`` made in place, ``l_0`` measured first. Same arguments as
    :class:`~forwardonly.optim.HiZOO`."""

    def __init__(self, params, lr=1e-6, hessian_smooth=1e-8, weight_decay=0.0, low_rank=False,
                 direction="gaussian", **zo):
        super().__init__(params, dict(lr=lr, hessian_smooth=hessian_smooth, weight_decay=weight_decay),
                         direction=direction, **zo)
        self.low_rank = low_rank
        for _, p, _ in self._params():
            if low_rank and p.dim() == 2:
                self.state[p]["r"] = torch.full((p.shape[0],), float(p.shape[1]))
                self.state[p]["c"] = torch.full((p.shape[1],), float(p.shape[0]))
            else:
                self.state[p]["s"] = torch.ones(p.shape)

    def sigma(self, p):
        st = self.state[p]
        return st["s"] if "s" in st else torch.outer(st["r"], st["c"]) / st["r"].sum()

    def _perturb(self, step, probe, scale):
        for i, p, _ in self._params():
            p.add_((self.z(p, step, probe, i).float() / self.sigma(p).sqrt()).to(p.dtype), alpha=scale)

    def estimate(self, closure, step):
        l0 = self._loss(closure)
        grads, self.curv = [], []
        for k in range(self.q):
            self._perturb(step, k, self.eps)
            lp = self._loss(closure)
            self._perturb(step, k, -2 * self.eps)
            lm = self._loss(closure)
            self._perturb(step, k, self.eps)
            grads.append((lp - lm) / (2 * self.eps))
            self.curv.append(abs(lp + lm - 2 * l0) / (2 * self.eps**2))
        return l0, grads

    def update(self, step, grads, closure):
        for i, p, group in self._params():
            lr, alpha = group["lr"], group["hessian_smooth"]
            if lr == 0.0:
                continue
            zs = [self.z(p, step, k, i).float() for k in range(self.q)]
            est = sum(h * z * z for h, z in zip(self.curv, zs)) / self.q
            st, old = self.state[p], self.sigma(p)
            if "s" in st:
                st["s"] = (1 - alpha) * old + alpha * old * est
            else:
                st["r"] = (1 - alpha) * st["r"] + alpha * (old * est).sum(1)
                st["c"] = (1 - alpha) * st["c"] + alpha * (old * est).sum(0)
            g = sum(gk * z for gk, z in zip(grads, zs)) / self.q
            if group["weight_decay"]:
                p.mul_(1 - lr * group["weight_decay"])
            p.sub_((lr * g / self.sigma(p).sqrt()).to(p.dtype))
