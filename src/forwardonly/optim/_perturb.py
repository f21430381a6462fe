"""Seeded perturbation directions and perturbation inside the forward pass.

Directions
----------
A direction is a pure function of ``(seed, step, probe, param_index)``: nothing
about it is stored, the global RNG is never touched, and any slice of it can be
regenerated on its own. Each parameter is cut into fixed chunks of
:data:`CHUNK` elements; chunk ``c`` is drawn from a generator seeded with a
64-bit hash of ``(seed, step, probe, param_index, c)``. Generating a tensor in
one go or chunk by chunk therefore gives the same values, which lets the fast
optimizers work through small scratch buffers (cache-friendly, no
parameter-sized temporaries) while the reference twins generate whole tensors.

* ``rademacher``: entries are +-1. Random 64-bit words are unpacked with a
  256-row lookup table (one row of 8 signs per byte), which is several times
  cheaper than drawing Gaussians.
* ``gaussian``: standard normal entries from ``torch.Tensor.normal_``.

Values depend on the device type's generator (CPU and CUDA differ) but never on
chunking, threads or the global RNG.

Perturbing inside the forward
-----------------------------
In-place perturb-and-restore (``w += eps*z; ...; w -= eps*z``) does not give the
weights back bit for bit: in bf16/fp16 the rounding error of every step piles up
and runs collapse. :class:`Perturbation` never writes to a weight. While it is
active, a global forward pre-hook gives each module whose parameters are being
perturbed a temporary ``w + sum_k c_k z_k`` (``param.data`` points at it for the
duration of that module's forward) and the matching post-hook puts the original
storage back. Only one module's temporaries are alive at a time, so the memory
overhead is that of the largest single parameter tensor. Parameters that no
module owns (a bare tensor used in a closure) are swapped for the whole
evaluation instead.

Plain ``nn.Linear`` and ``nn.Embedding`` modules, which hold nearly all of a
transformer's weights, skip the whole copy (``Perturbation(fused=True)``, the
default): their weight is perturbed block by block inside the op, or only the
looked-up rows, with the same values (:mod:`forwardonly.optim._fused`). The
update uses the same blockwise generation (:meth:`Directions.perturb_range`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import contextlib
import functools

import torch

from . import _native

CHUNK = 1 << 20
"""Elements per independently seeded chunk. Part of the definition of a direction: do not change."""

KINDS = ("rademacher", "gaussian")
_MASK64 = (1 << 64) - 1
HOLD_BYTES = 64 << 20
"""Most bytes of random words :meth:`Directions.hold` keeps (a step of a 512M-parameter model)."""
BLOCK = 1 << 20
"""Elements per block of the fused paths: a 4 MB fp32 block stays in L3 between being built and being
used, and few, large ops keep Python and thread-sync overhead low (an implementation detail, not part
of a direction)."""


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


def _sign_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (dtype, str(device))
    table = _TABLES.get(key)
    if table is None:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        table = (bits * 2 - 1).to(dtype=dtype, device=device).contiguous()
        _TABLES[key] = table
    return table


def _packed_sign_table(device: torch.device) -> torch.Tensor:
    """256 int64 words; word ``i`` holds, as eight int8 bytes in memory order, the signs of byte ``i``'s bits
    (lowest first). Only ever copied whole and read back as int8, so byte order does not matter."""
    key = ("packed", str(device))
    table = _TABLES.get(key)
    if table is None:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        signs = (bits * 2 - 1).to(torch.int8).contiguous()
        table = signs.view(torch.int64).view(-1).to(device)
        _TABLES[key] = table
    return table


def _generator(device: torch.device) -> torch.Generator:
    key = str(device)
    gen = _GENERATORS.get(key)
    if gen is None:
        gen = _GENERATORS[key] = torch.Generator(device=device)
    return gen


def _fill_chunk(out: torch.Tensor, kind: str, seed: int) -> None:
    """Fill the 1-D contiguous ``out`` (at most CHUNK elements) with one chunk's values."""
    gen = _generator(out.device)
    gen.manual_seed(seed)
    n = out.numel()
    if kind == "rademacher":
        words = torch.empty((n + 63) // 64, dtype=torch.int64, device=out.device)
        words.random_(-(2**63), None, generator=gen)
        idx = words.view(torch.uint8)[: (n + 7) // 8].to(torch.int32)
        table = _sign_table(out.dtype, out.device)
        if n % 8 == 0:
            torch.index_select(table, 0, idx, out=out.view(-1, 8))
        else:
            out.copy_(torch.index_select(table, 0, idx).view(-1)[:n])
    elif kind == "gaussian":
        if out.dtype in (torch.float32, torch.float64):
            out.normal_(generator=gen)
        else:  # draw in fp32 so low-precision runs see the same direction as fp32 ones, rounded
            out.copy_(torch.empty(n, device=out.device).normal_(generator=gen))
    else:
        raise ValueError(f"Invalid direction kind: {kind!r} (expected one of {KINDS})")


def direction(
    shape, kind: str, seed: int, step: int, probe: int, param_index: int,
    *, dtype=torch.float32, device="cpu",
) -> torch.Tensor:
    """The whole direction tensor for one parameter (reference path; allocates ``shape``)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    flat = out.view(-1)
    for c, start in enumerate(range(0, flat.numel(), CHUNK)):
        _fill_chunk(flat[start : start + CHUNK], kind, chunk_seed(seed, step, probe, param_index, c))
    return out


class _Arena:
    """A bump allocator of int64 words on one device: segments are allocated once and reused."""

    SEGMENT = 1 << 21  # words per segment (16 MB)

    def __init__(self, device):
        self.device = device
        self.segments: list[torch.Tensor] = []
        self.reset()

    def reset(self) -> None:
        self.seg, self.off, self.used = 0, 0, 0

    def fits(self, words: int) -> bool:
        return (self.used + words) * 8 <= HOLD_BYTES

    def take(self, words: int) -> torch.Tensor:
        while True:
            if self.seg == len(self.segments):
                self.segments.append(torch.empty(max(words, self.SEGMENT), dtype=torch.int64, device=self.device))
            buf = self.segments[self.seg]
            if self.off + words <= buf.numel():
                out = buf[self.off : self.off + words]
                self.off += words
                self.used += words
                return out
            self.seg, self.off = self.seg + 1, 0


class Directions:
    """Generates and applies the directions of one run.

    Args:
        seed: run seed; every direction is a function of it and of (step, probe, param_index).
        kind: ``"rademacher"`` (default) or ``"gaussian"``.
    """

    def __init__(self, seed: int = 0, kind: str = "rademacher"):
        if kind not in KINDS:
            raise ValueError(f"Invalid direction kind: {kind!r} (expected one of {KINDS})")
        self.seed = int(seed)
        self.kind = kind
        self._scratch: dict[tuple, torch.Tensor] = {}

    def scratch(self, dtype, device, n: int = CHUNK) -> torch.Tensor:
        """A reused buffer of at least ``min(n, CHUNK)`` elements: sized by the largest request so far, so
        that models whose trainable tensors are small (quantization scales, LoRA) never hold a whole chunk."""
        key = (dtype, str(device))
        n = min(int(n), CHUNK)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < n:
            self._scratch.pop(key, None)  # free the smaller one first
            buf = self._scratch[key] = torch.empty(n, dtype=dtype, device=device)
        return buf

    def full(self, p: torch.Tensor, step: int, probe: int, param_index: int, dtype=None) -> torch.Tensor:
        return direction(p.shape, self.kind, self.seed, step, probe, param_index,
                         dtype=dtype or p.dtype, device=p.device)

    def fill(self, z: torch.Tensor, step: int, probe: int, param_index: int, chunk: int) -> None:
        """Fill the 1-D ``z`` with chunk ``chunk`` of direction ``(step, probe, param_index)``: the one
        place where helpers outside this class (:func:`accumulate`, the low-precision update) generate
        a chunk, so that a subclass that changes the directions (e.g. masks them) changes them there too."""
        _fill_chunk(z, self.kind, chunk_seed(self.seed, step, probe, param_index, chunk))

    def chunks(self, p: torch.Tensor, step: int, probe: int, param_index: int, dtype=None):
        """Yield ``(start, stop, z_chunk)`` over ``p.view(-1)``; ``z_chunk`` is a reused scratch view."""
        n = p.numel()
        buf = self.scratch(dtype or p.dtype, p.device, n)
        for c, start in enumerate(range(0, n, CHUNK)):
            stop = min(start + CHUNK, n)
            z = buf[: stop - start]
            _fill_chunk(z, self.kind, chunk_seed(self.seed, step, probe, param_index, c))
            yield start, stop, z

    @property
    def ranged(self) -> bool:
        """Whether :meth:`perturb_range` and :meth:`gather` may be used: not where a subclass remaps
        :meth:`chunks` (e.g. a probe offset), since they read chunk seeds directly."""
        return type(self).chunks is Directions.chunks

    def _chunk_values(self, seed: int, n: int, dtype, device) -> torch.Tensor:
        """One chunk's values, cached with the last few chunks asked for (until :meth:`release`):
        Gaussian values, or for Rademacher the chunk's random int64 words (bit ``k`` of the little-endian
        byte stream is the sign of element ``k``: bit ``k & 7`` of byte ``k >> 3``)."""
        key = (seed, n, str(device), self.kind)
        cache = self.__dict__.setdefault("_lru", {})
        held = self.__dict__.setdefault("_recent", {})  # words in the arena, while a hold lasts
        vals = cache.get(key)
        if vals is None:
            vals = held.get(key)
        if vals is None and self.__dict__.get("_previous"):
            vals = self._previous.get(key)  # the last step's words, kept for its deferred update
        if vals is not None:
            return vals
        if self.kind == "gaussian":
            vals = torch.empty(n, dtype=dtype, device=device)
            _fill_chunk(vals, "gaussian", seed)
        else:
            words = (n + 63) // 64
            in_arena = self.__dict__.get("_held", 0) and self._arena(device).fits(words)
            vals = (self._arena(device).take(words) if in_arena
                    else torch.empty(words, dtype=torch.int64, device=device))
            gen = _generator(torch.device(device))
            gen.manual_seed(seed)
            vals.random_(-(2**63), None, generator=gen)
            if in_arena:
                held[key] = vals
                return vals
        if len(cache) >= 4:  # a few probes' chunks, so that blockwise multi-term passes do not regenerate
            del cache[next(iter(cache))]
        cache[key] = vals
        return vals

    def _arena(self, device) -> "_Arena":
        arenas = self.__dict__.setdefault("_arenas", {})
        key = ("current", str(device))
        if key not in arenas:
            arenas[key] = _Arena(device)
        return arenas[key]

    def release(self) -> None:
        """Drop the cached chunks (at most four chunks of memory), unless :meth:`hold` keeps them."""
        if not self.__dict__.get("_held", 0):
            self.__dict__.pop("_lru", None)
            self.__dict__.pop("_recent", None)
            self.__dict__.pop("_previous", None)
            for arena in self.__dict__.get("_arenas", {}).values():
                arena.reset()

    @contextlib.contextmanager
    def hold(self):
        """Keep Rademacher chunks' random words between passes for the duration (one ZO step: the
        ``+eps`` pass, the ``-eps`` pass and the update read the same directions), so each chunk is drawn
        once per step instead of three times. Values are unchanged.

        The words (1/8 byte per perturbed entry, at most :data:`HOLD_BYTES`; chunks past that are drawn
        again as without a hold) go into a bump-allocated arena that is kept and reused from step to
        step, so that thousands of small, short-lived tensors do not fragment the heap between the
        forward's activations. Gaussian chunks are never held (4 bytes per entry). Setting
        ``carry = True`` before the outermost hold ends keeps its words through the next hold (for a
        deferred update): two arenas, so at most two steps' words are alive."""
        self._held = self.__dict__.get("_held", 0) + 1
        try:
            yield self
        finally:
            self._held -= 1
            if self._held == 0 and self.__dict__.pop("carry", False):
                # a deferred update will read these words in the next step: keep them one step longer
                arenas = self.__dict__.setdefault("_arenas", {})
                for key in [k for k in arenas if k[0] == "current"]:
                    prev = arenas.get(("previous", key[1]))
                    arenas[("previous", key[1])] = arenas.pop(key)
                    if prev is not None:
                        prev.reset()
                        arenas[key] = prev
                self._previous = self.__dict__.pop("_recent", {})
                self.__dict__.pop("_lru", None)
            elif self._held == 0:
                self.release()

    def _pieces(self, numel: int, start: int, stop: int):
        """Split ``[start, stop)`` of a ``numel``-element parameter at chunk borders: ``(c, clen, a, b)``."""
        pos = start
        while pos < stop:
            c = pos // CHUNK
            base = c * CHUNK
            clen = min(CHUNK, numel - base)
            end = min(stop, base + clen)
            yield c, clen, pos - base, end - base
            pos = end

    def perturb_range(self, dst: torch.Tensor, src: torch.Tensor, step: int,
                      terms: Sequence[tuple[int, float]], param_index: int, numel: int, start: int) -> None:
        """``dst = src + sum_k coef_k z_k[start:start+len]`` over a slice of a flattened parameter.

        ``dst`` and ``src`` are 1-D and contiguous (``dst is src`` is fine); the arithmetic is that of
        :meth:`perturbed`, element for element, so the values are bitwise the same. Used on blocks
        small enough to stay in cache, which is why it exists.
        """
        n = dst.numel()
        if not terms:
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src)
            return
        if (len(terms) == 1 and self.kind == "rademacher" and start // CHUNK == (start + n - 1) // CHUNK
                and dst.dtype == torch.float32 and src.dtype == torch.float32 and dst.device.type == "cpu"
                and _native.library() is not None):
            # the common case (one term, inside one chunk), without the general loop's bookkeeping
            (probe, coef), = terms
            c = start // CHUNK
            words = self._chunk_values(chunk_seed(self.seed, step, probe, param_index, c),
                                       min(CHUNK, numel - c * CHUNK), dst.dtype, dst.device)
            _native.sign_add_f32(dst, src, words, start - c * CHUNK, coef)
            return
        z_buf = None
        native = (self.kind == "rademacher" and dst.dtype == torch.float32 and dst.device.type == "cpu"
                  and src.dtype == torch.float32 and dst.is_contiguous() and src.is_contiguous()
                  and _native.library() is not None)
        for j, (probe, coef) in enumerate(terms):
            for c, clen, a, b in self._pieces(numel, start, start + n):
                o = c * CHUNK + a - start
                d, s = dst[o : o + b - a], src[o : o + b - a]
                vals = self._chunk_values(chunk_seed(self.seed, step, probe, param_index, c), clen,
                                          dst.dtype, dst.device)
                if native:  # one pass, reading the random bits directly (bitwise the torch path's values)
                    _native.sign_add_f32(d, s if j == 0 else d, vals, a, coef)
                    continue
                if self.kind == "gaussian":
                    z = vals[a:b]
                else:
                    if z_buf is None:
                        z_buf = self._range_scratch(n + 16, dst.dtype, dst.device)
                        s_buf = self._range_scratch(n // 8 + 2, torch.int64, dst.device, slot="signs")
                    lo, hi = a // 8, (b + 7) // 8
                    # one 8-byte row (eight int8 signs) per random byte, then one widening copy: the same
                    # values as indexing a table of eight dtype signs per byte, at a third of the traffic
                    packed = s_buf[: hi - lo]
                    idx = vals.view(torch.uint8)[lo:hi].to(torch.int32)
                    torch.index_select(_packed_sign_table(dst.device), 0, idx, out=packed)
                    rows = z_buf[: (hi - lo) * 8]
                    rows.copy_(packed.view(torch.int8))
                    z = rows[a - 8 * lo : b - 8 * lo]
                if j == 0:
                    torch.add(s, z, alpha=coef, out=d)
                else:
                    d.add_(z, alpha=coef)

    def fold_perturb_range(self, dst: torch.Tensor, w: torch.Tensor, fold_step: int, fold_terms, step: int,
                           terms, param_index: int, numel: int, start: int) -> None:
        """``w += sum fold_terms z(fold_step)`` in place, then ``dst = w + sum terms z(step)``, over a slice.

        Exactly :meth:`perturb_range` twice (``(w, w, fold_step, fold_terms)`` then ``(dst, w, step,
        terms)``), bit for bit; with one term each on fp32 CPU tensors the native kernel does both in
        one pass over ``w``, which is what a deferred update folded into the next forward costs then.
        """
        native = (len(fold_terms) == 1 and len(terms) == 1 and self.kind == "rademacher"
                  and w.dtype == torch.float32 and dst.dtype == torch.float32 and w.device.type == "cpu"
                  and dst.device.type == "cpu" and _native.library() is not None)
        if not native:
            self.perturb_range(w, w, fold_step, fold_terms, param_index, numel, start)
            self.perturb_range(dst, w, step, terms, param_index, numel, start)
            return
        (pa, ca), = fold_terms
        (pb, cb), = terms
        for c, clen, a, b in self._pieces(numel, start, start + w.numel()):
            o = c * CHUNK + a - start
            va = self._chunk_values(chunk_seed(self.seed, fold_step, pa, param_index, c), clen, w.dtype, w.device)
            vb = self._chunk_values(chunk_seed(self.seed, step, pb, param_index, c), clen, w.dtype, w.device)
            _native.sign_add2_f32(w[o : o + b - a], dst[o : o + b - a], va, vb, a, ca, cb)

    def _range_scratch(self, n: int, dtype, device, slot: str = "z") -> torch.Tensor:
        bufs = self.__dict__.setdefault("_ranges", {})
        key = (slot, dtype, str(device))
        buf = bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = bufs[key] = torch.empty(n, dtype=dtype, device=device)
        return buf

    def _matrix_scratch(self, rows: int, cols: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``rows x cols`` matrix on the start of the ``"w"`` range scratch, and its flat view; the
        views are kept until the scratch grows, so a layer's repeated calls do not rebuild them."""
        views = self.__dict__.setdefault("_matrix_views", {})
        key = (rows, cols, dtype, device)
        bufs = self.__dict__.get("_ranges")
        hit = views.get(key)
        if hit is not None and bufs is not None and bufs.get(("w", dtype, str(device))) is hit[0]:
            return hit[1], hit[2]
        base = self._range_scratch(rows * cols, dtype, device, slot="w")
        flat = base[: rows * cols]
        if len(views) > 64:
            views.clear()
        views[key] = (base, flat, flat.view(rows, cols))
        return flat, views[key][2]

    def gather(self, p: torch.Tensor, step: int, probe: int, param_index: int, flat_index: torch.Tensor):
        """``z(step, probe).view(-1)[flat_index]`` for a sorted 1-D ``flat_index``, generating only the
        chunks it touches (and, for Rademacher, reading single bits instead of whole chunks)."""
        out = torch.empty(flat_index.shape, dtype=p.dtype, device=p.device)
        numel = p.numel()
        first, last = int(flat_index[0]) // CHUNK, int(flat_index[-1]) // CHUNK
        borders = torch.arange(first, last + 2, device=flat_index.device) * CHUNK
        cuts = torch.searchsorted(flat_index, borders).tolist()
        for c in range(first, last + 1):
            lo, hi = cuts[c - first], cuts[c - first + 1]
            if lo == hi:
                continue
            clen = min(CHUNK, numel - c * CHUNK)
            vals = self._chunk_values(chunk_seed(self.seed, step, probe, param_index, c), clen, p.dtype, p.device)
            off = flat_index[lo:hi] - c * CHUNK
            if self.kind == "gaussian":
                out[lo:hi] = vals[off]
            else:
                bit = (vals.view(torch.uint8)[off >> 3].to(torch.int32) >> (off & 7).to(torch.int32)) & 1
                out[lo:hi] = bit * 2 - 1
        return out

    def add_(self, p: torch.Tensor, step: int, terms: Sequence[tuple[int, float]], param_index: int) -> None:
        """In place: ``p += sum_k coef_k * z(step, probe_k)`` (the update), in cache-sized blocks."""
        flat = p.view(-1) if p.is_contiguous() else None
        if flat is None:
            raise ValueError("ZO optimizers need contiguous parameters")
        terms = [(k, c) for k, c in terms if c != 0.0]
        if not terms:
            return
        if not self.ranged:
            for probe, coef in terms:
                for start, stop, z in self.chunks(p, step, probe, param_index):
                    flat[start:stop].add_(z, alpha=coef)
            return
        n = flat.numel()
        for start in range(0, n, BLOCK):
            block = flat[start : start + BLOCK]
            self.perturb_range(block, block, step, terms, param_index, n, start)
        self.release()

    def perturbed(self, p: torch.Tensor, step: int, terms: Sequence[tuple[int, float]],
                  param_index: int) -> torch.Tensor:
        """A new tensor ``p + sum_k coef_k * z(step, probe_k)``; ``p`` itself is not touched."""
        out = torch.empty_like(p, memory_format=torch.contiguous_format)
        src, dst = p.reshape(-1), out.view(-1)
        if terms and self.ranged:  # blockwise, reading held random words (the same values, bit for bit)
            n = src.numel()
            for start in range(0, n, BLOCK):
                self.perturb_range(dst[start : start + BLOCK], src[start : start + BLOCK], step, terms,
                                   param_index, n, start)
            return out
        first = True
        for probe, coef in terms:
            for start, stop, z in self.chunks(p, step, probe, param_index):
                if first:
                    torch.add(src[start:stop], z, alpha=coef, out=dst[start:stop])
                else:
                    dst[start:stop].add_(z, alpha=coef)
            first = False
        if first:
            out.copy_(p)
        return out


class Perturbation:
    """Context manager: forwards run at ``w + sum_k coef_k z_k`` without writing to ``w``.

    Args:
        params: ``[(param_index, param), ...]``: the perturbed parameters and the
            index that keys their directions.
        directions: the run's :class:`Directions`.
        step: step number of the directions.
        terms: ``[(probe, coef), ...]``.
        scales: optional per-parameter multiplier of every coefficient (e.g. a
            per-group learning rate), aligned with ``params``.
        whole: parameters to swap for the whole evaluation (not owned by any module).
        fused: let plain ``nn.Linear``/``nn.Embedding`` modules perturb their weight blockwise
            inside the op instead of receiving a whole copy (see :mod:`forwardonly.optim._fused`);
            the values are the same (default True).
        pending: ``{param_index: (step, terms)}``: deferred updates ``p += sum_k coef_k z_k(step)``
            to apply to each parameter just before its first use (folded into the blockwise
            ``nn.Linear`` where it takes that path); whatever the forward did not reach is
            applied on exit, exception or not. The dict is consumed.
        pair_terms: paired evaluation (:mod:`forwardonly.optim._paired`): the forward runs on a
            doubled batch whose first half sees ``terms`` and whose second half sees ``pair_terms``.

    After the context, :attr:`touched` holds the indices of the parameters that
    some module's forward used.
    """

    def __init__(self, params: Sequence[tuple[int, torch.Tensor]], directions: Directions, step: int,
                 terms: Sequence[tuple[int, float]], scales: Sequence[float] | None = None,
                 whole: Iterable[int] = (), fused: bool = True, pending: dict | None = None,
                 pair_terms: Sequence[tuple[int, float]] | None = None):
        self.params = {i: p for i, p in params}
        self.pair_terms = None if pair_terms is None else list(pair_terms)
        self._pair_state = None
        self._names: dict[int, str] | None = None
        self.pending = pending if pending is not None else {}
        self.index = {id(p): i for i, p in params}
        self.directions = directions
        self.step = step
        self.terms = list(terms)
        self.scales = dict(zip(self.params, scales)) if scales is not None else dict.fromkeys(self.params, 1.0)
        self.whole = set(whole)
        self.fused = fused
        self.touched: set[int] = set()
        self._swapped: dict[int, torch.Tensor] = {}  # param index -> original data
        self._frames: list[list[int]] = []
        self._handles = []

    def _settle(self, i: int) -> None:
        """Apply parameter ``i``'s deferred update, if it has one, before anything reads it."""
        if i in self.pending:
            pstep, terms = self.pending.pop(i)
            self.directions.add_(self.params[i], pstep, terms, i)

    def _swap_in(self, i: int) -> bool:
        if i in self._swapped:
            return False
        self._settle(i)
        p = self.params[i]
        s = self.scales[i]
        tmp = self.directions.perturbed(p.data, self.step, [(k, c * s) for k, c in self.terms], i)
        self._swapped[i] = p.data
        p.data = tmp
        return True

    def _swap_out(self, i: int) -> None:
        self.params[i].data = self._swapped.pop(i)

    def _pre(self, module, args):
        frame, mode, pairs = [], None, {}
        paired = self.pair_terms is not None
        if paired:
            self._pair_state.see_inputs(args)
        for p in module._parameters.values():
            i = self.index.get(id(p)) if p is not None else None
            if i is None:
                continue
            self.touched.add(i)
            s = self.scales[i]
            if mode is None and self.fused and i not in self._swapped and self._fusable(module, p, self.directions):
                fold = None
                if i in self.pending and type(module) is torch.nn.Linear:
                    fold = self.pending.pop(i)  # applied block by block inside the perturbed linear
                else:
                    self._settle(i)
                mode = self._Fused(self.directions, self.step, [(k, c * s) for k, c in self.terms], i, p,
                                   fold=fold, pair_state=self._pair_state,
                                   pair_terms=None if not paired else [(k, c * s) for k, c in self.pair_terms])
            elif paired:
                self._settle(i)
                d = self.directions
                pairs[id(p)] = (p, d.perturbed(p.data, self.step, [(k, c * s) for k, c in self.terms], i),
                                d.perturbed(p.data, self.step, [(k, c * s) for k, c in self.pair_terms], i))
            elif self._swap_in(i):
                frame.append(i)
        if pairs and mode is not None:
            mode.pairs = pairs  # an nn.Linear's bias: one value per half, added inside the fused linear
        elif pairs:
            idx = ", ".join(map(str, sorted(self.index[k] for k in pairs)))
            mode = self._PairedOps(f"{type(module).__name__} (parameter {idx})", pairs, self._pair_state, args,
                                   module._buffers.values())
        if mode is not None:
            mode.__enter__()
        self._frames.append((frame, mode))

    def _post(self, module, args, output):
        mode = self._frames[-1][1] if self._frames else None
        try:
            if mode is not None and hasattr(mode, "check_output"):
                mode.check_output(output)
        finally:
            self._pop_frame()

    def _pop_frame(self):
        frame, mode = self._frames.pop()
        if mode is not None:
            mode.__exit__(None, None, None)
            if hasattr(mode, "settle"):
                mode.settle()  # a fold the op never reached (the module did not call F.linear on it)
        for i in frame:
            self._swap_out(i)

    def __enter__(self):
        from torch.nn.modules import module as nn_module

        from ._fused import FusedWeight, fusable

        self._Fused, self._fusable = FusedWeight, fusable
        if self.pair_terms is not None:
            from ._paired import PairedOps, PairState, Unpairable

            self._PairedOps, self._pair_state = PairedOps, PairState()
            if self.whole:
                raise Unpairable(f"paired evaluation: parameters {sorted(self.whole)} are not owned by any module, "
                                 f"so they cannot see two values in one forward; use paired=False")
        try:
            for i in sorted(self.whole):
                self._swap_in(i)
            self._handles = [
                nn_module.register_module_forward_pre_hook(self._pre),
                nn_module.register_module_forward_hook(self._post, always_call=True),
            ]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        while self._frames:  # only if a post-hook never ran
            self._pop_frame()
        for i in list(self._swapped):
            self._swap_out(i)
        for i in sorted(self.pending):  # parameters the forward never used (or an exception stopped it)
            self._settle(i)
        self.directions.release()
        return False


def accumulate(directions: Directions, p: torch.Tensor, step: int, terms: Sequence[tuple[int, float]],
               param_index: int, dtype=None):
    """Yield ``(start, stop, g)`` with ``g = sum_k coef_k z_k`` over chunks of ``p.view(-1)``.

    ``g`` is a reused scratch buffer of at most :data:`CHUNK` elements: consume it
    before asking for the next chunk. With a single term no extra buffer is used.
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
            directions.fill(z, step, probe, param_index, c)
            if j == 0:
                torch.mul(z, coef, out=g)
            else:
                g.add_(z, alpha=coef)
        yield start, stop, g
