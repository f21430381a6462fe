"""LOZO: ZO-SGD along low-rank directions ``U V^T``, with a lazily resampled subspace; LOZO-M adds momentum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .base import _check
from .perturb.directions import BLOCK
from .perturb.sums import accumulate
from .perturb.lowrank import LowRankDirections
from .zosgd import ZOSGD, ZOSGDConfig

_LOW = (torch.bfloat16, torch.float16)


@dataclass
class LOZOConfig(ZOSGDConfig):
    """LOZO's options: ZO-SGD's, plus the rank of the directions and how long their subspace lives.

    Args:
        rank: ``r``, the rank of each matrix's direction ``U V^T``.
        interval: steps during which ``V`` (the subspace) is kept (LOZO's ``nu``).
        momentum: LOZO-M's momentum ``beta`` (kept as an ``m x r`` factor per matrix); 0 is LOZO.
        direction: entries of ``U``, ``V`` (and of other parameters' directions).
    """

    rank: int = 2
    interval: int = 50
    direction: Literal["rademacher", "gaussian"] = "gaussian"


class LOZO(ZOSGD):
    """LOZO and LOZO-M (Chen et al., "Enhancing Zeroth-order Fine-tuning for Language Models with Low-rank
    Structures", arXiv:2410.07698, ICLR 2025).

    Every matrix ``W`` (``m x n``) is perturbed along ``Z = U V^T``: ``U`` (``m x r``) is drawn every step,
    ``V`` (``n x r``) every ``interval`` steps (:class:`~forwardonly.optim.perturb.lowrank.LowRankDirections`);
    other parameters (biases, norms) along the usual elementwise ``z``. One step::

        c = (L(w + eps Z) - L(w - eps Z)) / (2 eps)
        W <- W - lr c U V^T / r            (matrices)      w <- w - lr c z      (the rest)

    LOZO-M (``momentum = beta > 0``) keeps, per matrix, an ``m x r`` factor ``N`` in the subspace of ``V``::

        N <- beta N + (1 - beta) c U,      W <- W - lr N V^T / r

    and when ``V`` is resampled, carries ``N`` into the new subspace, ``N <- N V_old^T V_new / n``; other
    parameters keep a full buffer ``b <- beta b + (1 - beta) c z``, ``w <- w - lr b``. With ``q`` probes
    ``c U`` becomes ``(1/q) sum_k c_k U_k``.

    The perturbed forward of a matrix runs through the usual paths (fused linear blocks, embedding rows,
    whole copies), which build the needed block of ``U V^T`` exactly (the same values in every path).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-6).
        rank: rank ``r`` of each matrix's direction (default 2), at most ``min(m, n)`` of every matrix.
        interval: steps per subspace ``V`` (default 50).
        momentum: ``beta`` of LOZO-M (default 0: LOZO).
        sign, conservative, weight_decay, defer_update: as :class:`ZOSGD` (plain LOZO; LOZO-M has no sign
            variant and does not defer).
        direction: ``"gaussian"`` (default, as the paper) or ``"rademacher"`` entries of ``U`` and ``V``.
        **zo: the other estimator options of :class:`~forwardonly.optim.base.ZOOptimizer`.

    Memory: ZO-SGD's; LOZO-M adds ``4 m r`` bytes per matrix and a full buffer for the other parameters.

    Example::

        opt = LOZO(model.parameters(), lr=1e-6, eps=1e-3, rank=2, interval=50)
        loss = opt.step(lambda: loss_fn(model(x), y))
    """

    _state_keys = ("rank", "interval")

    def __init__(self, params, lr: float | str = 1e-6, rank: int = 2, interval: int = 50, momentum: float = 0.0,
                 direction: str = "gaussian", **kw):
        _check(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1, f"Invalid rank: {rank}")
        _check(isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1,
               f"Invalid interval (steps per subspace): {interval}")
        _check(not (momentum and kw.get("sign")), "Invalid sign=True: LOZO-M (momentum > 0) has no sign variant")
        self.rank, self.interval = rank, interval
        super().__init__(params, lr=lr, momentum=momentum, direction=direction, **kw)
        self.zo_state.update(rank=rank, interval=interval)

    def _make_directions(self, seed, kind, mask, impl):
        shapes = {i: tuple(p.shape) for i, p, _ in self.indexed_params() if p.dim() == 2}
        return LowRankDirections(seed, kind, shapes=shapes, rank=self.rank, interval=self.interval,
                                 blockwise=impl != "plain", native=impl == "auto")

    def _matrix_coeffs(self, p: torch.Tensor, coeffs: list[float]) -> list[float]:
        return [c / self.rank for c in coeffs] if p.dim() == 2 else coeffs

    def _fold_terms(self, p, group, coeffs):
        return super()._fold_terms(p, group, self._matrix_coeffs(p, coeffs))

    @torch.no_grad()
    def _update(self, index: int, p: torch.Tensor, group: dict, step: int, coeffs: list[float]) -> None:
        if not group["momentum"]:
            return super()._update(index, p, group, step, self._matrix_coeffs(p, coeffs))
        lr, wd, beta = group["lr"], group["weight_decay"], group["momentum"]
        if wd:
            p.mul_(1.0 - lr * wd)
        if self.directions.is_matrix(index):
            self._momentum_matrix(index, p, lr, beta, step, coeffs)
            return
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.zeros_like(
                p, dtype=torch.float32 if p.dtype in _LOW else p.dtype, memory_format=torch.contiguous_format)
        buf.mul_(beta)
        bflat = buf.view(-1)
        for start, stop, g in accumulate(self.directions, p, step, list(enumerate(coeffs)), index,
                                         dtype=buf.dtype):
            bflat[start:stop].add_(g, alpha=1.0 - beta)
        p.add_(buf.to(p.dtype), alpha=-lr)

    def _momentum_matrix(self, index: int, p: torch.Tensor, lr: float, beta: float, step: int, coeffs) -> None:
        d, state = self.directions, self.state[p]
        m, n = p.shape
        epoch = d.epoch(step)
        v = d.v(step, index, p.device)
        factor = state.get("lowrank_momentum")
        if factor is None:
            factor = state["lowrank_momentum"] = torch.zeros(m, self.rank, dtype=torch.float32, device=p.device)
        elif int(state["epoch"]) != epoch:  # a new subspace: carry N over, N V_old^T V_new / n
            v_old = d.v(int(state["epoch"]) * self.interval, index, p.device)
            factor.copy_(factor @ (v_old.t() @ v) / n)
        state["epoch"] = epoch
        factor.mul_(beta)
        for k, c in enumerate(coeffs):
            factor.add_(d.u(step, k, index, p.device), alpha=(1.0 - beta) * c)
        rows = max(1, BLOCK // n)
        for r0 in range(0, m, rows):  # W -= lr N V^T / r, a block of rows at a time
            block = d.product_rows(factor[r0 : r0 + rows], v)
            p[r0 : r0 + rows].add_(block.to(p.dtype), alpha=-lr / self.rank)
