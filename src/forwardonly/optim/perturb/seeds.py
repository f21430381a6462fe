"""What a direction *is*: seeded chunks of random values, a pure function of their coordinates.

A direction is a function of ``(seed, step, probe, param_index)``: nothing about it is stored, the
global RNG is never touched, and any slice of it can be regenerated on its own. Each parameter is
cut into fixed chunks of :data:`CHUNK` elements; chunk ``c`` is drawn from a generator seeded with a
64-bit hash of ``(seed, step, probe, param_index, c)``. Generating a tensor in one go or chunk by
chunk therefore gives the same values, which lets the fast optimizers work through small scratch
buffers (cache-friendly, no parameter-sized temporaries) while the reference twins generate whole
tensors.

* ``rademacher``: entries are +-1. Random 64-bit words are unpacked with a 256-row lookup table
  (one row of 8 signs per byte), several times cheaper than drawing Gaussians.
* ``gaussian``: standard normal entries from ``torch.Tensor.normal_``.

Values depend on the device type's generator (CPU and CUDA differ) but never on chunking, threads
or the global RNG. On the CPU the native kernel draws the random words itself (:mod:`.native`: the same
MT19937 words as torch's generator, checked against it at load, three times faster).
"""

from __future__ import annotations

import functools

import torch

from . import native as _native

CHUNK = 1 << 20
"""Elements per independently seeded chunk. Part of the definition of a direction: do not change."""

KINDS = ("rademacher", "gaussian")
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=1 << 16)  # a pure function, asked for the same chunks by every pass of a step
def chunk_seed(seed: int, step: int, probe: int, param_index: int, chunk: int) -> int:
    """The 63-bit generator seed of one chunk of one direction."""
    h = 0x2545F4914F6CDD1D
    for v in (seed, step, probe, param_index, chunk):
        h = _splitmix64(h ^ (v & _MASK64))
    return h >> 1


_TABLES: dict[tuple, torch.Tensor] = {}
_GENERATORS: dict[str, torch.Generator] = {}


def sign_table(dtype: torch.dtype, device) -> torch.Tensor:
    """256 rows of 8 signs: row ``b`` holds the signs of byte ``b``'s bits, lowest first."""
    key = (dtype, str(device))
    table = _TABLES.get(key)
    if table is None:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        table = (bits * 2 - 1).to(dtype=dtype, device=device).contiguous()
        _TABLES[key] = table
    return table


def packed_sign_table(device) -> torch.Tensor:
    """256 int64 words; word ``i`` holds, as eight int8 bytes in memory order, the signs of byte ``i``'s bits
    (lowest first). Only ever copied whole and read back as int8, so byte order does not matter."""
    key = ("packed", str(device))
    table = _TABLES.get(key)
    if table is None:
        table = sign_table(torch.int8, "cpu").view(torch.int64).view(-1).to(device)
        _TABLES[key] = table
    return table


def generator(device) -> torch.Generator:
    """One reusable generator per device (reseeded for every chunk; never the global one)."""
    key = str(device)
    gen = _GENERATORS.get(key)
    if gen is None:
        gen = _GENERATORS[key] = torch.Generator(device=device)
    return gen


def random_words(out: torch.Tensor, seed: int) -> torch.Tensor:
    """Fill the int64 tensor ``out`` with the random words of generator seed ``seed`` (on the CPU the native
    kernel draws the same words as torch's generator, faster; :mod:`.native`)."""
    if out.device.type == "cpu" and out.is_contiguous() and _native.random_words(out, seed):
        return out
    gen = generator(out.device)
    gen.manual_seed(seed)
    return out.random_(-(2**63), None, generator=gen)


def fill_chunk(out: torch.Tensor, kind: str, seed: int) -> None:
    """Fill the 1-D contiguous ``out`` (at most CHUNK elements) with one chunk's values."""
    n = out.numel()
    if kind == "rademacher":
        words = random_words(torch.empty((n + 63) // 64, dtype=torch.int64, device=out.device), seed)
        idx = words.view(torch.uint8)[: (n + 7) // 8].to(torch.int32)
        table = sign_table(out.dtype, out.device)
        if n % 8 == 0:
            torch.index_select(table, 0, idx, out=out.view(-1, 8))
        else:
            out.copy_(torch.index_select(table, 0, idx).view(-1)[:n])
    elif kind == "gaussian":
        gen = generator(out.device)
        gen.manual_seed(seed)
        if out.dtype in (torch.float32, torch.float64):
            out.normal_(generator=gen)
        else:  # draw in fp32 so low-precision runs see the same direction as fp32 ones, rounded
            out.copy_(torch.empty(n, device=out.device).normal_(generator=gen))
    else:
        raise ValueError(f"Invalid direction kind: {kind!r} (expected one of {KINDS})")


def direction(shape, kind: str, seed: int, step: int, probe: int, param_index: int,
              *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The whole direction tensor for one parameter (reference path; allocates ``shape``)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    flat = out.view(-1)
    for c, start in enumerate(range(0, flat.numel(), CHUNK)):
        fill_chunk(flat[start : start + CHUNK], kind, chunk_seed(seed, step, probe, param_index, c))
    return out
