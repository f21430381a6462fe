"""What a federated ZO client sends: its local steps as (seed, projected gradients), packed.

A local ZO step of a client is rebuilt anywhere from its direction key (the ``step`` index the
directions are drawn for, :mod:`forwardonly.optim.perturb`: with the run's seed it names every
direction of the step) and the projected gradient of each probe. A message is those pairs back to
back, little-endian: ``uint32`` key, then ``q`` ``float64`` projected gradients (``NaN`` for a step the
client skipped as non-finite). 64-bit gradients keep a replay bitwise equal to the client's own step;
with ``q = 1`` a pair is 12 bytes, four local steps 48 bytes.
"""

from __future__ import annotations

import math
import struct

from ..errors import UserError

KEY = struct.Struct("<I")
GRAD = struct.Struct("<d")


def encode(pairs: list[tuple[int, list[float] | None]], q: int) -> bytes:
    """``[(key, grads or None), ...]`` as bytes (``None``: a skipped step)."""
    out = bytearray()
    for key, grads in pairs:
        if not 0 <= key < 2 ** 32:
            raise ValueError(f"direction key {key} does not fit 32 bits: fewer rounds, clients or local steps")
        values = [math.nan] * q if grads is None else list(grads)
        if len(values) != q:
            raise ValueError(f"step {key}: {len(values)} projected gradients, expected q={q}")
        out += KEY.pack(key)
        for g in values:
            out += GRAD.pack(float(g))
    return bytes(out)


def decode(data: bytes, q: int) -> list[tuple[int, list[float] | None]]:
    """The pairs of :func:`encode` (``None`` for a skipped step)."""
    size = KEY.size + q * GRAD.size
    if len(data) % size:
        raise UserError(f"federated message of {len(data)} bytes is not a whole number of {size}-byte steps")
    pairs = []
    for off in range(0, len(data), size):
        (key,) = KEY.unpack_from(data, off)
        grads = [GRAD.unpack_from(data, off + KEY.size + j * GRAD.size)[0] for j in range(q)]
        pairs.append((key, None if any(math.isnan(g) for g in grads) else grads))
    return pairs
