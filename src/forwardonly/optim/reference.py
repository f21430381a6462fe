"""Plain reference twins of the fast ZO optimizers: the test oracles.

They follow the papers line by line: MeZO's in-place perturbation
(``w += eps z; L+; w -= 2 eps z; L-; w += eps z``), regenerating each direction
from its seed every time it is needed, and textbook update rules on a
materialised gradient estimate. They use the same direction function as the
fast optimizers (:func:`forwardonly.optim.direction`), so the two agree step by
step up to floating-point rounding (the in-place restore is not exact, which is
why the fast optimizers never perturb in place).
"""

from __future__ import annotations

import math

import torch

from .base import indexed
from .evaluate import as_loss, call_closure
from .perturb import KINDS, direction

ZO_KEY = "zo"


class _ReferenceZO(torch.optim.Optimizer):
    def __init__(self, params, defaults, *, eps=1e-3, q=1, two_sided=True, direction="rademacher", seed=0,
                 accum_steps=1, clip=None):
        if defaults["lr"] < 0:
            raise ValueError(f"Invalid learning rate: {defaults['lr']}")
        if direction not in KINDS:
            raise ValueError(f"Invalid direction: {direction!r}")
        super().__init__(params, defaults)
        self.eps, self.q, self.two_sided, self.kind, self.seed = eps, q, two_sided, direction, seed
        self.accum_steps, self.clip = accum_steps, clip
        self.state[ZO_KEY] = {"step": 0, "skipped": 0, "forwards": 0}

    def _params(self):
        return indexed(self.param_groups)  # the parameter index that keys each direction, as the fast twin's

    def z(self, p, step, probe, i):
        """Regenerate direction ``z(step, probe, i)`` (MeZO's reseeded generator)."""
        return direction(p.shape, self.kind, self.seed, step, probe, i, dtype=p.dtype, device=p.device)

    def _loss(self, closure):
        vals = call_closure(closure, self.accum_steps)
        self.state[ZO_KEY]["forwards"] += len(vals)
        return sum(as_loss(v) for v in vals) / len(vals)

    def _perturb(self, step, probe, scale):
        for i, p, _ in self._params():
            p.add_(self.z(p, step, probe, i), alpha=scale)

    def estimate(self, closure, step):
        eps, grads, total = self.eps, [], 0.0
        l0 = None if self.two_sided else self._loss(closure)
        for k in range(self.q):
            self._perturb(step, k, eps)           # w + eps z
            lp = self._loss(closure)
            if self.two_sided:
                self._perturb(step, k, -2 * eps)  # w - eps z
                lm = self._loss(closure)
                self._perturb(step, k, eps)       # back to w
                grads.append((lp - lm) / (2 * eps))
                total += (lp + lm) / 2
            else:
                self._perturb(step, k, -eps)
                grads.append((lp - l0) / eps)
        return (total / self.q if self.two_sided else l0), grads

    def grad_estimate(self, p, i, step, grads):
        """``g_hat = sum_k g_k z_k / q`` for one parameter."""
        g = torch.zeros_like(p)
        for k, gk in enumerate(grads):
            g.add_(self.z(p, step, k, i), alpha=gk / self.q)
        return g

    @torch.no_grad()
    def step(self, closure):
        zs = self.state[ZO_KEY]
        t = zs["step"]
        loss, grads = self.estimate(closure, t)
        zs["step"] = t + 1
        if not (math.isfinite(loss) and all(math.isfinite(g) for g in grads)):
            zs["skipped"] += 1
            return torch.tensor(float("nan"))
        if self.clip is not None:
            grads = [max(-self.clip, min(self.clip, g)) for g in grads]
        self.update(t, grads, closure)
        return torch.tensor(loss)
