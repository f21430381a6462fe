"""HiZOO: ZO-SGD preconditioned by a diagonal Hessian estimated from one extra forward per step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from . import signal
from .base import ZOConfig, ZOOptimizer, _check
from .perturb.masks import Mask
from .perturb.seeds import CHUNK, chunk_seed, fill_chunk

_LOW = (torch.bfloat16, torch.float16)


@dataclass
class HiZOOConfig(ZOConfig):
    """HiZOO's options (see :class:`HiZOO`).

    Args:
        lr: learning rate.
        hessian_smooth: ``alpha``, the weight of a step's estimate in the moving average of the diagonal.
        weight_decay: L2 penalty.
        low_rank: HiZOO-L: keep each matrix's diagonal as row and column factors.
        direction: must be ``gaussian`` (Rademacher entries square to one: no per-entry curvature).
    """

    lr: float | Literal["auto"] = 1e-6
    hessian_smooth: float = 1e-8
    weight_decay: float = 0.0
    low_rank: bool = False
    direction: Literal["rademacher", "gaussian"] = "gaussian"


class _InvSqrtDiagonal(Mask):
    """The perturbation's multiplier ``Sigma^{-1/2}``, read from the optimizer's current diagonal."""

    identity = False

    def __init__(self, opt: HiZOO):
        self.opt = opt

    def range(self, seed, step, param_index, start, stop, numel, ref, device):
        return self.opt.diagonal(param_index, start, stop).rsqrt_()

    def at(self, seed, step, param_index, flat_index, numel, ref, device):
        return self.opt.diagonal_at(param_index, flat_index).rsqrt_()

    def whole(self, p, seed, step, param_index):
        return self.opt.diagonal(param_index, 0, p.numel()).rsqrt_().view(p.shape)


class HiZOO(ZOOptimizer):
    """HiZOO and HiZOO-L (Zhao et al., "Second-Order Fine-Tuning without Pain for LLMs: A Hessian Informed
    Zeroth-Order Optimizer", arXiv:2402.15173, ICLR 2025).

    A diagonal ``Sigma`` (initially ones, fp32) estimates the Hessian's diagonal. Each step measures
    ``l_0 = L(w)`` beside ``l_+-`` at ``w +- eps Sigma^{-1/2} z`` (Gaussian ``z``) and::

        g     = (l_+ - l_-) / (2 eps)
        h     = |l_+ + l_- - 2 l_0| / (2 eps^2)
        Sigma <- (1 - alpha) Sigma + alpha h Sigma z^2         (z^2 elementwise)
        w     <- w - lr (g z / sqrt(Sigma) + weight_decay w)

    (the update reads the new ``Sigma``, as the authors' code does). With ``q`` probes the estimate term
    and ``g z`` are averaged over them. A step costs ``2 q + 1`` forwards; with ``paired=True`` all of
    them run as one forward over the batch stacked ``2 q + 1`` times.

    HiZOO-L (``low_rank=True``) keeps each matrix's ``Sigma`` as Adafactor's rank-one factors, a row
    vector ``R`` and a column vector ``C`` with ``Sigma ~ R C^T / sum(R)``; the moving average updates
    ``R`` and ``C`` with the row and column sums of the step's estimate. Other parameters keep a full
    diagonal.

    The perturbation's ``Sigma^{-1/2}`` is a mask of the direction engine (every path multiplies by it),
    so the fused, whole-copy and embedding paths see the same values. The curvature scalars ``h`` (one
    per probe, signed; the update takes ``|h|``) are kept in ``state["zo"]["last_scalars"]``, combined
    over ranks like the projected gradients and logged in the seed log, so a replay is bitwise.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-6).
        hessian_smooth: ``alpha`` (default 1e-8, as the authors' scripts; the estimate ``h`` sums the
            curvature over every parameter, so a tiny ``alpha`` is a sizeable step for a large model).
        weight_decay: L2 penalty (default 0).
        low_rank: HiZOO-L (default False).
        **zo: estimator options of :class:`~forwardonly.optim.base.ZOOptimizer`; ``two_sided`` must stay
            True and ``direction`` ``"gaussian"`` (the default here).

    Memory: 4 bytes per trainable parameter for ``Sigma``; HiZOO-L ``4 (m + n)`` per ``m x n`` matrix.

    Example::

        opt = HiZOO(model.parameters(), lr=1e-6, eps=1e-3, hessian_smooth=1e-8)
        loss = opt.step(lambda: loss_fn(model(x), y))
    """

    _state_keys = ("low_rank",)

    def __init__(self, params, lr: float | str = 1e-6, hessian_smooth: float = 1e-8, weight_decay: float = 0.0,
                 low_rank: bool = False, direction: str = "gaussian", two_sided: bool = True, **zo):
        _check(0.0 <= hessian_smooth < 1.0 and math.isfinite(hessian_smooth),
               f"Invalid hessian_smooth (alpha of the Hessian's moving average): {hessian_smooth}")
        _check(two_sided, f"Invalid two_sided={two_sided!r}: HiZOO measures L(w) and L(w +- eps z)")
        _check(direction == "gaussian", f"Invalid direction: {direction!r} (HiZOO needs Gaussian entries: "
                                        f"Rademacher ones square to 1, so the diagonal cannot tell them apart)")
        defaults = dict(lr=lr, hessian_smooth=hessian_smooth, weight_decay=weight_decay)
        super().__init__(params, defaults, direction=direction, two_sided=True, mask=_InvSqrtDiagonal(self), **zo)
        self.low_rank = bool(low_rank)
        self.zo_state["low_rank"] = self.low_rank
        self._by_index = {i: p for i, p, _ in self.indexed_params()}
        for p in self._by_index.values():
            self._init_state(p)

    def _init_state(self, p: torch.Tensor) -> None:
        st = self.state[p]
        if self.low_rank and p.dim() == 2:
            m, n = p.shape
            st["hessian_row"] = torch.full((m,), float(n), dtype=torch.float32, device=p.device)
            st["hessian_col"] = torch.full((n,), float(m), dtype=torch.float32, device=p.device)
        else:
            st["hessian"] = torch.ones(p.numel(), dtype=torch.float32, device=p.device)

    # ------------------------------------------------------------- the diagonal
    def diagonal(self, index: int, start: int, stop: int) -> torch.Tensor:
        """``Sigma``'s entries ``[start, stop)`` of the flattened parameter ``index`` (a new fp32 tensor)."""
        p = self._by_index[index]
        st = self.state[p]
        if "hessian" in st:
            return st["hessian"][start:stop].clone()
        n = p.shape[1]
        r0, r1 = start // n, (stop - 1) // n + 1
        block = _outer(st["hessian_row"][r0:r1], st["hessian_col"], st["hessian_row"].sum())
        return block.view(-1)[start - r0 * n : stop - r0 * n]

    def diagonal_at(self, index: int, flat_index: torch.Tensor) -> torch.Tensor:
        p = self._by_index[index]
        st = self.state[p]
        if "hessian" in st:
            return st["hessian"][flat_index]
        n = p.shape[1]
        row, col = st["hessian_row"], st["hessian_col"]
        return row[flat_index // n] * col[flat_index % n] / row.sum()

    def _loss_is_exact(self) -> bool:
        return True  # a step returns l_0

    # ------------------------------------------------------------- estimate
    def _estimate(self, closure, step: int, probes: list[int]):
        eps = self.eps
        points = [[], *(pt for k in probes for pt in ([(k, eps)], [(k, -eps)]))]
        losses = self.losses(closure, step, points, self._eps_scales())
        l0, grads, curv = losses[0], [], []
        for j in range(len(probes)):
            lp, lm = losses[1 + 2 * j], losses[2 + 2 * j]
            grads.append((lp - lm) / (2 * eps))
            curv.append((lp + lm - 2 * l0) / (2 * eps * eps))
        self._probe_scalars = {"curvature": curv}
        self._row_grads = signal.pair_grads(self._rows, len(probes), eps)  # L(w) first, then pairs
        return l0, grads

    # --------------------------------------------------------------- update
    def _raw(self, p, step: int, probe: int, index: int, c: int, n: int, buf: torch.Tensor) -> torch.Tensor:
        """Chunk ``c`` of the unscaled direction in the parameter's dtype (the perturbation's values), as fp32."""
        z = buf[:n]
        fill_chunk(z, self.directions.kind, chunk_seed(self.directions.seed, step, probe, index, c))
        return z.float()

    def _estimates(self, p, step: int, index: int, c: int, n: int, coeffs, curv, alpha, buf):
        """Chunk ``c``'s ``(1/q) sum_k |h_k| z_k^2`` and ``sum_k coef_k z_k`` (fp32)."""
        est = torch.zeros(n, dtype=torch.float32, device=p.device)
        move = torch.zeros(n, dtype=torch.float32, device=p.device)
        for k, (coef, h) in enumerate(zip(coeffs, curv)):
            z = self._raw(p, step, k, index, c, n, buf)
            est.addcmul_(z, z, value=abs(h) / len(coeffs))
            move.add_(z, alpha=coef)
        return est, move

    @torch.no_grad()
    def _update(self, index: int, p: torch.Tensor, group: dict, step: int, coeffs: list[float]) -> None:
        lr, wd, alpha = group["lr"], group["weight_decay"], group["hessian_smooth"]
        curv = self._scalars["curvature"]
        st, flat, numel = self.state[p], p.view(-1), p.numel()
        buf = torch.empty(min(CHUNK, numel), dtype=p.dtype, device=p.device)
        if "hessian" not in st:
            self._update_factors(p, st, step, index, coeffs, curv, alpha, buf)
        for c, start in enumerate(range(0, numel, CHUNK)):
            stop = min(start + CHUNK, numel)
            est, move = self._estimates(p, step, index, c, stop - start, coeffs, curv, alpha, buf)
            if "hessian" in st:
                h = st["hessian"][start:stop]
                h.mul_(est.mul_(alpha).add_(1.0 - alpha))  # (1 - alpha) S + alpha S est
            else:
                h = self.diagonal(index, start, stop)
            w = flat[start:stop].float()
            if wd:
                w.mul_(1.0 - lr * wd)
            flat[start:stop].copy_(w.sub_(move.div_(h.sqrt()), alpha=lr))

    def _update_factors(self, p, st, step, index, coeffs, curv, alpha, buf) -> None:
        """HiZOO-L: ``R``, ``C`` <- ``(1 - alpha) (R, C) + alpha`` (row, column) sums of ``Sigma est``."""
        m, n = p.shape
        rows = torch.zeros(m, dtype=torch.float32, device=p.device)
        cols = torch.zeros(n, dtype=torch.float32, device=p.device)
        numel = p.numel()
        for c, start in enumerate(range(0, numel, CHUNK)):
            stop = min(start + CHUNK, numel)
            est, _ = self._estimates(p, step, index, c, stop - start, coeffs, curv, alpha, buf)
            obs = est.mul_(self.diagonal(index, start, stop))
            r0, lead = start // n, start % n
            grid = torch.zeros((lead + stop - start + n - 1) // n * n, dtype=torch.float32, device=p.device)
            grid[lead : lead + stop - start] = obs
            grid = grid.view(-1, n)
            rows[r0 : r0 + grid.shape[0]] += grid.sum(1)
            cols += grid.sum(0)
        st["hessian_row"].mul_(1.0 - alpha).add_(rows, alpha=alpha)
        st["hessian_col"].mul_(1.0 - alpha).add_(cols, alpha=alpha)


def _outer(rows: torch.Tensor, cols: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``rows cols^T / total`` elementwise (the same rounding for any block of rows)."""
    return rows[:, None] * cols[None, :] / total
