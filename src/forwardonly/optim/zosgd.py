"""ZO-SGD (MeZO) and its momentum, sign and conservative variants."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._perturb import accumulate
from .base import ZOOptimizer, _check


class ZOSGD(ZOOptimizer):
    """Zeroth-order SGD: MeZO's two-sided estimate, applied in place.

    Implements MeZO (Malladi et al., "Fine-Tuning Language Models with Just
    Forward Passes", NeurIPS 2023) and the ZO-SGD variants of ZO-Bench (Zhang et
    al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM
    Fine-Tuning", ICML 2024): ``w -= lr * (sum_k g_k z_k / q + weight_decay * w)``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-6).
        momentum: heavy-ball momentum (ZO-SGD-MMT); needs one parameter-sized buffer (default 0).
        sign: step along the sign of the estimate (ZO-SGD-Sign) (default False).
        conservative: evaluate ``w - lr*g`` (and ``w + lr*g``) and keep whichever
            of the candidates and ``w`` has the lowest loss (ZO-SGD-Cons); 2-3 extra
            forwards per step (default False).
        weight_decay: L2 penalty (default 0).
        **zo: estimator options of :class:`~forwardonly.optim.base.ZOOptimizer`
            (eps, q, two_sided, direction, seed, accum_steps, clip).

    Memory (bytes per trainable parameter, beyond the weights): 0 for plain,
    sign and conservative; 4 (fp32 weights) for momentum. Temporaries are one
    module's parameters plus a 1M-element scratch buffer.

    Example::

        opt = ZOSGD(model.parameters(), lr=1e-6, eps=1e-3, seed=0)
        def closure():
            return loss_fn(model(x), y)   # forward only
        loss = opt.step(closure)
    """

    def __init__(self, params, lr: float = 1e-6, momentum: float = 0.0, sign: bool = False,
                 conservative: bool = False, weight_decay: float = 0.0, **zo):
        _check(0.0 <= momentum < 1.0, f"Invalid momentum value: {momentum}")
        defaults = dict(lr=lr, momentum=momentum, sign=bool(sign), weight_decay=weight_decay)
        super().__init__(params, defaults, **zo)
        self.conservative = bool(conservative)

    def apply_grads(self, step: int, grads: list[float], closure: Callable | None = None, loss=None):
        coeffs = [g / self.q for g in grads]
        if not self.conservative:
            self._apply(step, coeffs)
            return
        if closure is None:
            raise ValueError("the conservative variant needs the closure to compare candidate losses")
        # Candidates w - lr*g and w + lr*g, evaluated without touching w.
        zs = self.zo_state
        scales = [group["lr"] for _, _, group in self.indexed_params()]
        l0 = self.evaluate(closure, step, [])
        down = [(k, -c) for k, c in enumerate(coeffs)]
        l1 = self.evaluate(closure, step, down, scales)
        if l1 <= l0:
            choice = 1.0
        else:
            l2 = self.evaluate(closure, step, [(k, c) for k, c in enumerate(coeffs)], scales)
            choice = -1.0 if l2 < l0 else 0.0
        zs["cons_choice"] = choice
        if choice:
            self._apply(step, [choice * c for c in coeffs])

    @torch.no_grad()
    def _apply(self, step: int, coeffs: list[float]) -> None:
        d = self.directions
        for i, p, group in self.indexed_params():
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            if lr == 0.0:
                continue
            flat = p.view(-1)
            if mu == 0.0 and not group["sign"]:
                if wd:
                    p.mul_(1.0 - lr * wd)
                d.add_(p, step, [(k, -lr * c) for k, c in enumerate(coeffs)], i)
                continue
            if mu:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                else:
                    buf.mul_(mu)
                bflat = buf.view(-1)
                for start, stop, g in accumulate(d, p, step, list(enumerate(coeffs)), i):
                    bflat[start:stop].add_(g)
                if wd:
                    buf.add_(p, alpha=wd)
                if group["sign"]:
                    p.add_(buf.sign(), alpha=-lr)
                else:
                    p.add_(buf, alpha=-lr)
            else:  # sign without momentum
                if wd:
                    p.mul_(1.0 - lr * wd)
                for start, stop, g in accumulate(d, p, step, list(enumerate(coeffs)), i):
                    flat[start:stop].add_(g.sign_(), alpha=-lr)
