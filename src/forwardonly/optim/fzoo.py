"""FZOO: several one-sided probes per step, in one forward, and a step normalised by their loss spread."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

from . import signal
from .base import _check
from .zosgd import ZOSGD, ZOSGDConfig


@dataclass
class FZOOConfig(ZOSGDConfig):
    """FZOO's options: ZO-SGD's, with FZOO's defaults (``q`` probes, one-sided; see :class:`FZOO`).

    Args:
        q: one-sided probes per step (at least 2: the step is divided by their losses' spread).
        two_sided: must stay False (FZOO's estimate is one-sided).
    """

    lr: float | Literal["auto"] = 1e-6
    q: int = 8
    two_sided: bool = False


class FZOO(ZOSGD):
    """FZOO (Dang et al., "FZOO: Fast Zeroth-Order Optimizer for Fine-Tuning Large Language Models towards
    Adam-Scale Speed", arXiv:2506.09034, ICLR 2026): ``q`` one-sided Rademacher probes per step, the step
    divided by the standard deviation of their losses.

    One step, with ``l_0 = L(w)`` and ``l_k = L(w + eps u_k)`` for ``k < q`` (``u_k`` Rademacher)::

        g_k   = (l_k - l_0) / eps
        sigma = std(l_1, ..., l_q)              (sample standard deviation, q - 1 in the denominator)
        w    <- w - lr / sigma * (1/q) sum_k g_k u_k

    The division by ``sigma`` makes it a normalised-SGD step (the paper's Theorem: ``sigma ~ eps |grad|``):
    large where the loss is flat, small where it is steep. With ``paired=True`` the ``q + 1`` points of a
    step are evaluated in *one* forward over the batch stacked ``q + 1`` times
    (:func:`forwardonly.optim.pair_batch`, :func:`forwardonly.optim.pair_losses`; the paper's batched
    forward); otherwise one forward per point. Either way a step costs ``q + 1`` forward passes of the batch.

    ``sigma`` is computed from the projected gradients as ``eps * std(g_k)`` (the same number, since
    ``l_k - l_0 = eps g_k``), so that distributed runs, which agree on the ``g_k`` only, agree on it too;
    it is kept in ``state["zo"]["last_scalars"]`` and logged in the seed log, and a replay reads it from
    there. A step whose probe losses all coincide (``sigma = 0``) moves nothing.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-6). The step of one coordinate is about ``lr / (eps sqrt(q))``.
        q: probes per step (default 8, as in the paper), at least 2.
        momentum, sign, conservative, weight_decay, defer_update: as :class:`ZOSGD`, applied to the
            normalised step.
        **zo: the other estimator options of :class:`~forwardonly.optim.base.ZOOptimizer` (eps,
            direction, seed, accum_steps, clip, paired, impl); ``two_sided`` must stay False.

    Memory: as :class:`ZOSGD`; with ``paired=True`` the activations of a batch ``q + 1`` times as large.

    Example::

        opt = FZOO(model.parameters(), lr=1e-6, eps=1e-3, q=8, paired=True)
        def closure():
            per_row = loss_fn(model(pair_batch(x)), pair_batch(y))   # one loss per row, no reduction
            return pair_losses(per_row)                               # the q + 1 slices' losses
        loss = opt.step(closure)
    """

    _pairs_two_sided_only = False  # its points (w and the q probes) go into one forward

    def __init__(self, params, lr: float | str = 1e-6, q: int = 8, two_sided: bool = False, **kw):
        _check(isinstance(q, int) and not isinstance(q, bool) and q >= 2,
               f"Invalid number of probes q: {q} (FZOO divides its step by the standard deviation of the q "
               f"probe losses, which needs q >= 2)")
        _check(not two_sided, f"Invalid two_sided={two_sided!r}: FZOO's estimate is one-sided")
        super().__init__(params, lr=lr, q=q, two_sided=False, **kw)

    def _estimate(self, closure, step: int, probes: list[int]):
        eps = self.eps
        losses = self.losses(closure, step, [[], *([(k, eps)] for k in probes)], self._eps_scales())
        l0 = losses[0]
        self._row_grads = signal.one_sided_grads(self._rows, len(probes), eps)
        return l0, [(lk - l0) / eps for lk in losses[1:]]

    def _coefficients(self, step: int, grads: list[float]) -> list[float]:
        sigma = self._scalars.get("sigma")
        if sigma is None:  # a live step (a replay reads the logged one)
            sigma = self._scalars["sigma"] = self.eps * statistics.stdev(grads)
        if not sigma > 0.0:
            return [0.0] * len(grads)
        return [g / (len(grads) * sigma) for g in grads]
