"""Weighted sums of a parameter's directions, chunk by chunk: what an update adds to the weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .directions import Directions
from .seeds import CHUNK


def accumulate(directions: Directions, p: torch.Tensor, step: int, terms: Sequence[tuple[int, float]],
               param_index: int, dtype=None):
    """Yield ``(start, stop, g)`` with ``g = sum_k coef_k z_k`` over chunks of ``p.view(-1)``.

    ``g`` is a reused scratch buffer of at most :data:`CHUNK` elements: consume it before asking for
    the next chunk. With a single term no extra buffer is used.
    """
    dtype = dtype or p.dtype
    n = p.numel()
    if len(terms) == 1:
        (probe, coef), = terms
        for start, stop, z in directions.chunks(p, step, probe, param_index, dtype):
            yield start, stop, z.mul_(coef)
        return
    acc = torch.empty(min(CHUNK, n), dtype=dtype, device=p.device)
    for c, start in enumerate(range(0, n, CHUNK)):
        stop = min(start + CHUNK, n)
        g = acc[: stop - start]
        z = directions.scratch(dtype, p.device, n)[: stop - start]
        for j, (probe, coef) in enumerate(terms):
            directions.fill(z, step, probe, param_index, c, p.detach().view(-1)[start:stop])
            if j == 0:
                torch.mul(z, coef, out=g)
            else:
                g.add_(z, alpha=coef)
        yield start, stop, g
