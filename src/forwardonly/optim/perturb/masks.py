"""Masks: an elementwise multiplier of a direction (0/1 for sparse ZO, any scale for a preconditioner).

A mask is a constructor argument of :class:`~forwardonly.optim.perturb.Directions`, not a subclass:
every path that generates direction values (whole tensors, chunks, blockwise ranges, embedding rows)
multiplies by the same mask, so the fused and plain paths agree bit for bit. A path asks for the
multiplier of a flat range of one parameter, or of a few gathered entries, and hands over the
*reference values* of those entries (the unperturbed weights), so that a mask may depend on them:

* :class:`RandomMask` keeps each entry with probability ``density``, a pure function of
  ``(seed, step, param_index)`` drawn from its own generator seeds (ZO-Bench's sparse ZO);
* :class:`MagnitudeMask` keeps the entries whose magnitude is at most a per-tensor threshold
  (Sparse-MeZO): the mask is recomputed from the weights wherever it is needed, only the thresholds
  (one scalar per tensor) are kept.

A mask is never stored whole: it is regenerated wherever it is needed.
"""

from __future__ import annotations

import math

import torch

from .seeds import CHUNK, chunk_seed, random_words

MASK_PROBE = -1
"""The probe slot of a mask's generator seeds: masks never share a seed with a direction."""

MASK_LEVELS = 1 << 16
"""Mask resolution: entry ``j`` is kept with probability ``round(density * 65536) / 65536`` (at least one level)."""


def _check_density(density) -> float:
    if not (isinstance(density, (int, float)) and not isinstance(density, bool) and 0.0 < density <= 1.0):
        raise ValueError(f"Invalid density (fraction of entries perturbed): {density}")
    return float(density)


def mask_chunk(seed: int, step: int, param_index: int, chunk: int, n: int, density: float,
               device="cpu", *, drop: bool = False) -> torch.Tensor:
    """The boolean random mask of one chunk (with ``drop=True``, its complement).

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
    """The whole random mask of one parameter (reference path); chunked exactly like a direction."""
    n = math.prod(shape)
    parts = [mask_chunk(seed, step, param_index, c, min(CHUNK, n - start), density, device)
             for c, start in enumerate(range(0, n, CHUNK))]
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool, device=device)).view(shape)


class Mask:
    """The protocol of a mask (and a no-op one): multipliers of a direction's entries.

    ``start``/``stop`` and ``flat_index`` are positions in the flattened parameter; a range never
    crosses a chunk border (:data:`~forwardonly.optim.perturb.seeds.CHUNK`), gathered entries lie in
    one chunk. ``ref`` holds the reference values of those entries (the unperturbed weights), or is
    None where the caller has none (masks that need them raise).
    """

    identity = True
    """Every multiplier is one: the paths skip the multiplication (bitwise the unmasked direction)."""

    needs_values = False
    """The multipliers depend on the reference values (callers must pass ``ref``)."""

    def range(self, seed: int, step: int, param_index: int, start: int, stop: int, numel: int,
              ref: torch.Tensor | None, device) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def at(self, seed: int, step: int, param_index: int, flat_index: torch.Tensor, numel: int,
           ref: torch.Tensor | None, device) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def whole(self, p: torch.Tensor, seed: int, step: int, param_index: int) -> torch.Tensor:
        """The multiplier of every entry of ``p`` (reference path; ``p`` holds the reference values)."""
        raise NotImplementedError  # pragma: no cover

    def release(self) -> None:
        pass


class RandomMask(Mask):
    """Keep each entry with probability ``density`` (in ``(0, 1]``), the same for every probe of a step.

    Args:
        density: the fraction of entries kept.

    Example::

        d = Directions(seed=0, mask=RandomMask(0.2))   # 20 % of each tensor perturbed per step
    """

    def __init__(self, density: float):
        self.density = _check_density(density)
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def identity(self) -> bool:
        return self.density >= 1.0

    @property
    def full_density(self) -> bool:
        return self.identity

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

    def range(self, seed, step, param_index, start, stop, numel, ref, device):
        c = start // CHUNK
        base = c * CHUNK
        return self.chunk(seed, step, param_index, c, min(CHUNK, numel - base), device)[start - base : stop - base]

    def at(self, seed, step, param_index, flat_index, numel, ref, device):
        c = int(flat_index[0]) // CHUNK
        return self.chunk(seed, step, param_index, c, min(CHUNK, numel - c * CHUNK), device)[flat_index - c * CHUNK]

    def whole(self, p, seed, step, param_index):
        return mask(p.shape, seed, step, param_index, self.density, p.device)

    def release(self) -> None:
        self._cache.clear()


class MagnitudeMask(Mask):
    """Keep the entries whose magnitude is at most their tensor's threshold (Sparse-MeZO, Liu et al. 2024).

    The thresholds are one scalar per tensor, set by :meth:`set_thresholds` (the ``density``-quantile
    of the tensor's magnitudes, :func:`magnitude_threshold`) and looked up by step: a threshold set for
    step ``t`` holds for every later step until the next one is set, so the perturbation and the update
    of a step (also an update deferred into the next step's forward) read the same threshold. The mask
    itself is never stored: ``|w| <= h`` is evaluated on the reference values each time.

    Args:
        density: the fraction of each tensor's entries kept (the smallest magnitudes), in ``(0, 1]``.

    Example::

        m = MagnitudeMask(0.25)
        m.set_thresholds(0, {i: magnitude_threshold(p, 0.25) for i, p in enumerate(params)})
        d = Directions(seed=0, mask=m)
    """

    needs_values = True

    def __init__(self, density: float):
        self.density = _check_density(density)
        self._h: dict[int, list[tuple[int, float]]] = {}  # param index -> [(from step, threshold)], newest last

    @property
    def identity(self) -> bool:
        return self.density >= 1.0

    def set_thresholds(self, step: int, thresholds: dict[int, float]) -> None:
        """Thresholds that hold from ``step`` on (the two newest per tensor are kept: a deferred update of
        the step before still reads its own)."""
        for i, h in thresholds.items():
            hist = [e for e in self._h.get(i, []) if e[0] < step]
            self._h[i] = [*hist[-1:], (step, float(h))]

    def threshold(self, step: int, param_index: int) -> float:
        for since, h in reversed(self._h.get(param_index, [])):
            if since <= step:
                return h
        raise KeyError(f"MagnitudeMask: no threshold for parameter {param_index} at step {step}")

    def thresholds_at(self, step: int) -> dict[int, float]:
        return {i: self.threshold(step, i) for i in self._h}

    def _keep(self, ref, step, param_index, dtype):
        if ref is None:
            raise ValueError("MagnitudeMask needs the reference values of the entries it masks")
        return (ref.abs() <= self.threshold(step, param_index)).to(dtype)

    def range(self, seed, step, param_index, start, stop, numel, ref, device):
        return self._keep(ref, step, param_index, ref.dtype if ref is not None else torch.float32)

    def at(self, seed, step, param_index, flat_index, numel, ref, device):
        return self._keep(ref, step, param_index, ref.dtype if ref is not None else torch.float32)

    def whole(self, p, seed, step, param_index):
        return self._keep(p, step, param_index, p.dtype)


def magnitude_threshold(p: torch.Tensor, density: float) -> float:
    """The ``density``-quantile of ``|p|``: ``ceil(density * numel)`` entries lie at or below it (ties
    may add a few)."""
    flat = p.detach().reshape(-1).abs().float()
    k = max(1, min(flat.numel(), math.ceil(density * flat.numel())))
    return float(flat.kthvalue(k).values)
