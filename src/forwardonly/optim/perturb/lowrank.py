"""Low-rank directions (LOZO): ``Z = U V^T`` for every matrix, ``U`` drawn each step, ``V`` every few.

For a 2-D parameter of shape ``(m, n)`` the direction of ``(step, probe)`` is ``Z = U V^T`` with
``U`` (``m x r``) a function of ``(seed, step, probe, param_index)`` and ``V`` (``n x r``) a function of
``(seed, step // interval, param_index)``: the subspace spanned by ``V`` is kept for ``interval`` steps
(LOZO's lazy sampling). Any other parameter gets the elementwise direction of
:class:`~forwardonly.optim.perturb.Directions`. ``U`` and ``V`` are drawn from their own generator seeds
(a negative parameter slot, so they never coincide with an elementwise direction) with the run's kind.

Entries of ``Z`` are computed in fp32 as ``sum_k U[i, k] * V[j, k]``, one rank after the other, one
rounding per product and per sum, whatever block of ``Z`` is asked for: a whole copy, a row block of
the fused linear, a chunk of the update or a few gathered embedding rows see the same values, bit for
bit. They are then rounded to the parameter's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .directions import Directions
from .seeds import CHUNK, direction

V_PROBE = -2
"""The probe slot of ``V``'s generator seeds (``U`` uses the probe's own)."""


def _slot(param_index: int) -> int:
    return -(param_index + 1)  # elementwise directions use param_index >= 0


class LowRankDirections(Directions):
    """:class:`~forwardonly.optim.perturb.Directions` whose matrices get rank-``rank`` directions.

    Args:
        seed, kind, blockwise, native: as :class:`~forwardonly.optim.perturb.Directions`.
        shapes: ``{param_index: (m, n)}`` of the parameters that get low-rank directions.
        rank: ``r``, the rank of ``Z`` (at most ``min(m, n)`` for every matrix).
        interval: steps during which ``V`` is kept.

    Example::

        d = LowRankDirections(0, "gaussian", shapes={0: (64, 32)}, rank=2, interval=50)
        z = d.full(w, step=3, probe=0, param_index=0)     # U(3) V(0)^T, rank 2
    """

    def __init__(self, seed: int = 0, kind: str = "gaussian", *, shapes: dict[int, tuple[int, int]],
                 rank: int = 2, interval: int = 50, blockwise: bool = True, native: bool = True):
        super().__init__(seed, kind, blockwise=blockwise, native=native)
        for i, (m, n) in shapes.items():
            if not 1 <= rank <= min(m, n):
                raise ValueError(f"Invalid rank: {rank} (parameter {i} is a {m}x{n} matrix; the rank must be "
                                 f"between 1 and {min(m, n)})")
        self.shapes, self.rank, self.interval = dict(shapes), int(rank), int(interval)
        self._factors: dict[tuple, torch.Tensor] = {}

    def is_matrix(self, param_index: int) -> bool:
        return param_index in self.shapes

    def epoch(self, step: int) -> int:
        """The index of the subspace (``V``) of ``step``."""
        return step // self.interval

    # ------------------------------------------------------------------ factors
    def _factor(self, key: tuple, rows: int, step: int, probe: int, param_index: int, device) -> torch.Tensor:
        f = self._factors.get(key)
        if f is None:
            f = direction((rows, self.rank), self.kind, self.seed, step, probe, _slot(param_index),
                          dtype=torch.float32, device=device)
            if len(self._factors) >= 64:
                del self._factors[next(iter(self._factors))]
            self._factors[key] = f
        return f

    def u(self, step: int, probe: int, param_index: int, device="cpu") -> torch.Tensor:
        """``U`` (``m x r``, fp32) of ``(step, probe)``."""
        m = self.shapes[param_index][0]
        return self._factor(("u", step, probe, param_index, str(device)), m, step, probe, param_index, device)

    def v(self, step: int, param_index: int, device="cpu") -> torch.Tensor:
        """``V`` (``n x r``, fp32) of the subspace ``step`` belongs to."""
        n, e = self.shapes[param_index][1], self.epoch(step)
        return self._factor(("v", e, param_index, str(device)), n, e, V_PROBE, param_index, device)

    def release(self) -> None:
        super().release()
        if not self._held:
            self._factors.clear()

    # ------------------------------------------------------------------ values
    @staticmethod
    def product_rows(left: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``left @ v.T`` (fp32) accumulated rank by rank (one rounding per product and per sum), so that
        any block of rows gets the same values as the whole."""
        out = left[:, 0:1] * v[:, 0]
        for k in range(1, left.shape[1]):
            out.add_(left[:, k : k + 1] * v[:, k])
        return out

    def flat(self, step: int, probe: int, param_index: int, start: int, stop: int, dtype, device) -> torch.Tensor:
        """Entries ``[start, stop)`` of the flattened ``Z = U V^T`` of a matrix, in ``dtype``."""
        n = self.shapes[param_index][1]
        r0, r1 = start // n, (stop - 1) // n + 1
        block = self.product_rows(self.u(step, probe, param_index, device)[r0:r1], self.v(step, param_index, device))
        return block.view(-1)[start - r0 * n : stop - r0 * n].to(dtype)

    def full(self, p, step, probe, param_index, dtype=None):
        if not self.is_matrix(param_index):
            return super().full(p, step, probe, param_index, dtype)
        return self.flat(step, probe, param_index, 0, p.numel(), dtype or p.dtype, p.device).view(p.shape)

    def fill(self, z, step, probe, param_index, chunk, ref=None):
        if not self.is_matrix(param_index):
            return super().fill(z, step, probe, param_index, chunk, ref)
        start = chunk * CHUNK
        z.copy_(self.flat(step, probe, param_index, start, start + z.numel(), z.dtype, z.device))

    def perturb_range(self, dst, src, step, terms: Sequence[tuple[int, float]], param_index, numel, start):
        if not self.is_matrix(param_index) or not terms:
            return super().perturb_range(dst, src, step, terms, param_index, numel, start)
        stop = start + dst.numel()
        for j, (probe, coef) in enumerate(terms):  # the arithmetic of the elementwise path, term by term
            z = self.flat(step, probe, param_index, start, stop, dst.dtype, dst.device)
            if j == 0:
                torch.add(src, z, alpha=coef, out=dst)
            else:
                dst.add_(z, alpha=coef)

    def fold_perturb_range(self, dst, w, fold_step, fold_terms, step, terms, param_index, numel, start):
        if not self.is_matrix(param_index):
            return super().fold_perturb_range(dst, w, fold_step, fold_terms, step, terms, param_index, numel, start)
        self.perturb_range(w, w, fold_step, fold_terms, param_index, numel, start)
        self.perturb_range(dst, w, step, terms, param_index, numel, start)

    def gather(self, p, step, probe, param_index, flat_index):
        if not self.is_matrix(param_index):
            return super().gather(p, step, probe, param_index, flat_index)
        n = self.shapes[param_index][1]
        u, v = self.u(step, probe, param_index, p.device), self.v(step, param_index, p.device)
        rows, cols = flat_index // n, flat_index % n
        out = u[rows, 0] * v[cols, 0]
        for k in range(1, self.rank):
            out.add_(u[rows, k] * v[cols, k])
        return out.to(p.dtype)
