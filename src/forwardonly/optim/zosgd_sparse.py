"""Sparse ZO-SGD: each step perturbs (and updates) a random fraction of every tensor's entries."""

from __future__ import annotations

import math

import torch

from ._perturb import CHUNK, Directions, _fill_chunk, _generator, chunk_seed, direction
from .base import ZO_KEY, _check
from .zosgd import ZOSGD

MASK_PROBE = -1
"""The probe slot of the mask's generator seeds: masks never share a seed with a direction."""


MASK_LEVELS = 1 << 16
"""Mask resolution: entry ``j`` is kept with probability ``round(density * 65536) / 65536`` (at least one level)."""


def mask_chunk(seed: int, step: int, param_index: int, chunk: int, n: int, density: float,
               device="cpu", *, drop: bool = False) -> torch.Tensor:
    """The boolean mask of one chunk (with ``drop=True``, its complement).

    Entry ``j`` reads a uniform int16 ``v_j`` (two bytes of random 64-bit words from a generator
    seeded by ``(seed, step, MASK_PROBE, param_index, chunk)``) and is kept iff
    ``v_j < k - 32768`` with ``k = round(density * 65536)``: probability ``k / 65536``. Two random
    bytes per entry instead of a float: about 30x cheaper than ``torch.rand``.
    """
    k = max(1, min(MASK_LEVELS, round(density * MASK_LEVELS)))
    if k == MASK_LEVELS:
        return torch.full((n,), not drop, dtype=torch.bool, device=device)
    gen = _generator(torch.device(device))
    gen.manual_seed(chunk_seed(seed, step, MASK_PROBE, param_index, chunk))
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=gen)
    v = words.view(torch.int16)[:n]
    t = k - MASK_LEVELS // 2
    return v >= t if drop else v < t


def mask(shape, seed: int, step: int, param_index: int, density: float, device="cpu") -> torch.Tensor:
    """The whole mask of one parameter (reference path); chunked exactly like a direction."""
    n = math.prod(shape)
    parts = [mask_chunk(seed, step, param_index, c, min(CHUNK, n - start), density, device)
             for c, start in enumerate(range(0, n, CHUNK))]
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool, device=device)).view(shape)


class MaskedDirections(Directions):
    """Directions ``z * m``: the run's directions with every entry outside a step's mask set to 0.

    The mask is a pure function of ``(seed, step, param_index)`` (the same for every
    probe of a step) and keeps each entry with probability ``density``. Overriding
    :meth:`chunks` turns the fused (range) paths off (:attr:`Directions.ranged`), so every
    perturbation and update goes through :meth:`chunks`/:meth:`fill`.
    """

    def __init__(self, seed: int, kind: str, density: float):
        super().__init__(seed, kind)
        self.density = float(density)

    def fill(self, z, step, probe, param_index, chunk):
        _fill_chunk(z, self.kind, chunk_seed(self.seed, step, probe, param_index, chunk))
        if self.density < 1.0:
            # multiply rather than masked_fill_ (several times slower on CPU); dropped entries become
            # +-0.0, which perturb and update by exactly nothing, as in the reference's z * m
            z.mul_(mask_chunk(self.seed, step, param_index, chunk, z.numel(), self.density, z.device))

    def chunks(self, p, step, probe, param_index, dtype=None):
        n = p.numel()
        buf = self.scratch(dtype or p.dtype, p.device, n)
        for c, start in enumerate(range(0, n, CHUNK)):
            stop = min(start + CHUNK, n)
            z = buf[: stop - start]
            self.fill(z, step, probe, param_index, c)
            yield start, stop, z

    def full(self, p, step, probe, param_index, dtype=None):
        z = direction(p.shape, self.kind, self.seed, step, probe, param_index, dtype=dtype or p.dtype,
                      device=p.device)
        if self.density < 1.0:
            z.mul_(mask(p.shape, self.seed, step, param_index, self.density, p.device))
        return z


class ZOSGDSparse(ZOSGD):
    """ZO-SGD with sparse perturbations (ZO-Bench sec. 5; Sparse MeZO, Liu et al. 2024).

    Each step draws, for every trainable tensor, a random mask keeping a fraction
    ``density`` of its entries, perturbs only those entries (``w +- eps * (z * m)``)
    and updates only them (``w -= lr * g * (z * m)``): the estimate lives in a
    ``density * d``-dimensional subspace, which lowers its variance. The mask is a pure
    function of ``(seed, step, parameter index)``, drawn from its own generator seeds
    (never the global RNG) and regenerated wherever it is needed, never stored. The
    masked directions are *not* rescaled by ``1/density``: ``lr`` is the step size on
    the entries that move. Masks are random, not magnitude-based.

    Args:
        params, lr, momentum, sign, conservative, weight_decay, **zo: as :class:`ZOSGD`.
            Weight decay acts on every entry (it needs no direction).
        density: fraction of entries perturbed per step, in ``(0, 1]`` (default 0.2);
            ``density=1`` gives ZO-SGD's directions exactly.

    Cost: one extra uniform draw per entry per direction generation, and no fused
    linear/embedding path (the plain whole-copy perturbation is used).

    Example::

        opt = ZOSGDSparse(model.parameters(), lr=1e-6, eps=1e-3, density=0.2)
        loss = opt.step(lambda: loss_fn(model(x), y))
    """

    def __init__(self, params, lr: float = 1e-6, density: float = 0.2, **kw):
        _check(isinstance(density, (int, float)) and 0.0 < density <= 1.0,
               f"Invalid density (fraction of entries perturbed): {density}")
        super().__init__(params, lr=lr, **kw)
        self.density = float(density)
        self.directions = MaskedDirections(self.directions.seed, self.directions.kind, self.density)
        self.zo_state["density"] = self.density

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["state"].get(ZO_KEY, {}).get("density")
        if saved is not None and saved != self.density:
            raise ValueError(f"optimizer state was saved with density={saved!r}, this optimizer has {self.density!r}")
        super().load_state_dict(state_dict)
