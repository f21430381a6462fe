"""Reference twin of :class:`~forwardonly.optim.ZOSGD`: MeZO and ZO-Bench's ZO-SGD variants, line by line."""

from __future__ import annotations

from .reference import _ReferenceZO


class ZOSGDReference(_ReferenceZO):
    """MeZO's ZO-SGD as published: in-place perturbation, four regenerations of each direction
    per step (perturb, perturb, restore, update), plus momentum, sign and conservative variants.
    Same arguments as :class:`~forwardonly.optim.ZOSGD`."""

    def __init__(self, params, lr=1e-6, momentum=0.0, sign=False, conservative=False, weight_decay=0.0, **zo):
        super().__init__(params, dict(lr=lr, momentum=momentum, sign=sign, weight_decay=weight_decay), **zo)
        self.conservative = conservative

    def _move(self, step, grads, scale):
        for i, p, group in self._params():
            p.add_(self.grad_estimate(p, i, step, grads), alpha=scale * group["lr"])

    def update(self, step, grads, closure):
        if self.conservative:
            l0 = self._loss(closure)
            self._move(step, grads, -1.0)           # w - lr g
            if self._loss(closure) <= l0:
                return
            self._move(step, grads, 2.0)            # w + lr g
            if self._loss(closure) < l0:
                return
            self._move(step, grads, -1.0)           # back to w
            return
        for i, p, group in self._params():
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            if lr == 0.0:
                continue
            g = self.grad_estimate(p, i, step, grads)
            if mu:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                buf = g.clone() if buf is None else buf.mul_(mu).add_(g)
                state["momentum_buffer"] = buf
                if wd:
                    buf.add_(p, alpha=wd)
                p.add_(buf.sign() if group["sign"] else buf, alpha=-lr)
            else:
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(g.sign() if group["sign"] else g, alpha=-lr)
