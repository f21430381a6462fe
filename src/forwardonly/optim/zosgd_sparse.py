"""Sparse ZO-SGD: each step perturbs (and updates) a random fraction of every tensor's entries."""

from __future__ import annotations

import math

import torch

from ._perturb import CHUNK, Directions, _fill_chunk, _generator, chunk_seed, direction
from .base import ZO_KEY, _check
from .zosgd import ZOSGD

MASK_PROBE = -1
"""The probe slot of the mask's generator seeds: masks never share a seed with a direction."""


def mask_chunk(seed: int, step: int, param_index: int, chunk: int, n: int, density: float,
               device="cpu") -> torch.Tensor:
    """The boolean mask of one chunk: entry ``j`` is kept iff ``u_j < density``, ``u`` uniform,
    drawn from a generator seeded by ``(seed, step, MASK_PROBE, param_index, chunk)``."""
    gen = _generator(torch.device(device))
    gen.manual_seed(chunk_seed(seed, step, MASK_PROBE, param_index, chunk))
    return torch.rand(n, generator=gen, device=device) < density


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
            z.masked_fill_(~mask_chunk(self.seed, step, param_index, chunk, z.numel(), self.density, z.device), 0)

    def chunks(self, p, step, probe, param_index, dtype=None):
        n = p.numel()
        buf = self.scratch(dtype or p.dtype, p.device)
        for c, start in enumerate(range(0, n, CHUNK)):
            stop = min(start + CHUNK, n)
            z = buf[: stop - start]
            self.fill(z, step, probe, param_index, c)
            yield start, stop, z

    def full(self, p, step, probe, param_index, dtype=None):
        z = direction(p.shape, self.kind, self.seed, step, probe, param_index, dtype=dtype or p.dtype,
                      device=p.device)
        if self.density < 1.0:
            z.masked_fill_(~mask(p.shape, self.seed, step, param_index, self.density, p.device), 0)
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
