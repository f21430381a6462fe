"""ZO-Adam with a light second moment."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .base import ZOConfig, ZOOptimizer, _check
from .perturb.sums import accumulate


@dataclass
class ZOAdamConfig(ZOConfig):
    """ZO-Adam's options (see :class:`ZOAdam`).

    Args:
        lr: learning rate.
        betas: Adam's moment decays.
        adam_eps: Adam's denominator term.
        weight_decay: decoupled weight decay.
        second_moment: ``scalar`` (one per tensor) or ``full`` (one per entry).
    """

    lr: float | Literal["auto"] = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    second_moment: Literal["scalar", "full"] = "scalar"


class ZOAdam(ZOOptimizer):
    """Adam on zeroth-order gradient estimates ``g_hat = sum_k g_k z_k / q``.

    ZO-Adam as in ZO-Bench (Zhang et al., ICML 2024), with decoupled weight
    decay (Loshchilov & Hutter, AdamW). By default the second moment is one
    scalar per parameter tensor, ``v = beta2 v + (1 - beta2) mean(g_hat^2)``:
    with Rademacher directions every entry of ``g_hat^2`` equals ``g^2`` when
    ``q = 1``, so a per-element buffer stores the same number millions of times.
    ``second_moment="full"`` keeps the per-element buffer of standard Adam.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-4).
        betas: ``(beta1, beta2)`` (default (0.9, 0.999)).
        adam_eps: denominator term (default 1e-8).
        weight_decay: decoupled weight decay (default 0).
        second_moment: ``"scalar"`` (default) or ``"full"``.
        **zo: estimator options of :class:`~forwardonly.optim.base.ZOOptimizer`.

    Memory (bytes per trainable parameter, fp32 weights): 4 (first moment) with
    the scalar second moment, 8 with ``second_moment="full"``.

    Example::

        opt = ZOAdam(model.parameters(), lr=1e-4, eps=1e-3)
        loss = opt.step(lambda: loss_fn(model(x), y))
    """

    def __init__(self, params, lr: float | str = 1e-4, betas=(0.9, 0.999), adam_eps: float = 1e-8,
                 weight_decay: float = 0.0, second_moment: str = "scalar", **zo):
        _check(0.0 <= betas[0] < 1.0, f"Invalid beta parameter at index 0: {betas[0]}")
        _check(0.0 <= betas[1] < 1.0, f"Invalid beta parameter at index 1: {betas[1]}")
        _check(adam_eps > 0.0, f"Invalid adam_eps value: {adam_eps}")
        _check(second_moment in ("scalar", "full"), f"Invalid second_moment: {second_moment!r}")
        defaults = dict(lr=lr, betas=tuple(betas), adam_eps=adam_eps, weight_decay=weight_decay,
                        second_moment=second_moment)
        super().__init__(params, defaults, **zo)

    def _persistence(self) -> float:
        return 1.0 / (1.0 - self.param_groups[0]["betas"][0])  # the first moment carries a step on

    @torch.no_grad()
    def _update(self, index: int, p: torch.Tensor, group: dict, step: int, coeffs: list[float]) -> None:
        d, terms = self.directions, list(enumerate(coeffs))
        lr, wd = group["lr"], group["weight_decay"]
        b1, b2 = group["betas"]
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            full = group["second_moment"] == "full"
            state["exp_avg_sq"] = (torch.zeros_like(p, memory_format=torch.contiguous_format) if full
                                   else torch.zeros((), dtype=torch.float32, device=p.device))
        state["step"] += 1
        n = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        mflat = m.view(-1)
        m.mul_(b1)
        if v.dim() == 0:
            sq = 0.0
            for start, stop, g in accumulate(d, p, step, terms, index, dtype=torch.float32):
                sq += float(torch.dot(g, g))
                mflat[start:stop].add_(g, alpha=1 - b1)
            v.mul_(b2).add_(sq / p.numel(), alpha=1 - b2)
        else:
            vflat = v.view(-1)
            v.mul_(b2)
            for start, stop, g in accumulate(d, p, step, terms, index, dtype=torch.float32):
                mflat[start:stop].add_(g, alpha=1 - b1)
                vflat[start:stop].addcmul_(g, g, value=1 - b2)
        bc1, bc2 = 1 - b1**n, 1 - b2**n
        if wd:
            p.mul_(1.0 - lr * wd)
        if v.dim() == 0:
            denom = math.sqrt(float(v) / bc2) + group["adam_eps"]
            p.add_(m, alpha=-lr / (bc1 * denom))
        else:
            denom = (v / bc2).sqrt_().add_(group["adam_eps"])
            p.addcdiv_(m, denom, value=-lr / bc1)
