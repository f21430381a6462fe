"""Masks: which entries of a direction are live (the others are exactly zero).

A mask is a constructor argument of :class:`~forwardonly.optim.perturb.Directions`, not a subclass:
every path that generates direction values (whole tensors, chunks, blockwise ranges, embedding rows)
multiplies by the same mask, so the fused and plain paths agree bit for bit.

:class:`RandomMask` keeps each entry with probability ``density``, a pure function of
``(seed, step, param_index)`` drawn from its own generator seeds (ZO-Bench's sparse ZO). A mask is
never stored: it is regenerated wherever it is needed.
"""

from __future__ import annotations

import math

import torch

from .seeds import CHUNK, chunk_seed, random_words

MASK_PROBE = -1
"""The probe slot of a mask's generator seeds: masks never share a seed with a direction."""

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
    words = random_words(torch.empty((n + 3) // 4, dtype=torch.int64, device=device),
                         chunk_seed(seed, step, MASK_PROBE, param_index, chunk))
    v = words.view(torch.int16)[:n]
    t = k - MASK_LEVELS // 2
    return v >= t if drop else v < t


def mask(shape, seed: int, step: int, param_index: int, density: float, device="cpu") -> torch.Tensor:
    """The whole mask of one parameter (reference path); chunked exactly like a direction."""
    n = math.prod(shape)
    parts = [mask_chunk(seed, step, param_index, c, min(CHUNK, n - start), density, device)
             for c, start in enumerate(range(0, n, CHUNK))]
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool, device=device)).view(shape)


class RandomMask:
    """Keep each entry with probability ``density`` (in ``(0, 1]``), the same for every probe of a step.

    Args:
        density: the fraction of entries kept.

    Example::

        d = Directions(seed=0, mask=RandomMask(0.2))   # 20 % of each tensor perturbed per step
    """

    def __init__(self, density: float):
        if not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
            raise ValueError(f"Invalid density (fraction of entries perturbed): {density}")
        self.density = float(density)
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def full_density(self) -> bool:
        return self.density >= 1.0

    def chunk(self, seed: int, step: int, param_index: int, chunk: int, n: int, device) -> torch.Tensor:
        """Chunk ``chunk``'s mask (``n`` entries), cached with the last few asked for."""
        key = (seed, step, param_index, chunk, n, str(device))
        m = self._cache.get(key)
        if m is None:
            m = mask_chunk(seed, step, param_index, chunk, n, self.density, device)
            if len(self._cache) >= 4:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = m
        return m

    def whole(self, shape, seed: int, step: int, param_index: int, device) -> torch.Tensor:
        return mask(shape, seed, step, param_index, self.density, device)

    def release(self) -> None:
        self._cache.clear()
