"""The directions of one run: generated where they are needed, added blockwise, never stored.

:class:`Directions` generates and applies ``z(seed, step, probe, param_index)`` (see
:mod:`~forwardonly.optim.perturb.seeds`). Two ways of working, with the same values bit for bit:

* **blockwise** (the default): a slice ``[start, stop)`` of a flattened parameter is perturbed from
  the random words of the chunks it touches (:meth:`Directions.perturb_range`), in cache-sized blocks,
  through the native kernel on fp32 CPU tensors (:mod:`~forwardonly.optim.perturb.native`). During a
  step (:meth:`Directions.hold`) each chunk's random words are drawn once and read by every pass.
* **plain** (``blockwise=False``): whole chunks are generated into a scratch buffer and added, the
  textbook loop the fast path is tested against.

A mask given as ``mask`` (:mod:`~forwardonly.optim.perturb.masks`) multiplies the entries in every path;
the paths hand it the reference values (the unperturbed weights) of the entries they generate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from . import native as _native
from .arena import Arena
from .seeds import CHUNK, KINDS, chunk_seed, direction, fill_chunk, packed_sign_table, random_words

_F32 = torch.float32
_CPU = torch.device("cpu")
BLOCK = 1 << 20
"""Elements per block of the fused paths: a 4 MB fp32 block stays in L3 between being built and being
used, and few, large ops keep Python and thread-sync overhead low (an implementation detail, not part
of a direction)."""


class Directions:
    """Generates and applies the directions of one run.

    Args:
        seed: run seed; every direction is a function of it and of (step, probe, param_index).
        kind: ``"rademacher"`` (default) or ``"gaussian"``.
        mask: optional :class:`~forwardonly.optim.perturb.masks.Mask` (random, magnitude, a preconditioner):
            directions ``z * m``.
        blockwise: use the blockwise paths (held random words, native kernel, fused layers); False
            keeps the plain chunk loop (default True; the values are the same).
        native: let fp32 Rademacher blocks on the CPU run through the native kernel (default True).

    Example::

        d = Directions(seed=0)
        z = d.full(w, step=3, probe=0, param_index=1)     # the whole direction (reference path)
        d.add_(w, 3, [(0, -1e-4)], 1)                       # w -= 1e-4 * z, blockwise
    """

    def __init__(self, seed: int = 0, kind: str = "rademacher", *, mask=None, blockwise: bool = True,
                 native: bool = True):
        if kind not in KINDS:
            raise ValueError(f"Invalid direction kind: {kind!r} (expected one of {KINDS})")
        self.seed, self.kind, self.mask = int(seed), kind, mask
        self.blockwise, self.native = bool(blockwise), bool(native)
        self.carry = False  # set before the outermost hold ends: keep its words one more step
        self._native_ok: bool | None = None  # the settings' half of _uses_native, once known
        self._scratch: dict[tuple, torch.Tensor] = {}
        self._ranges: dict[tuple, torch.Tensor] = {}
        self._matrix_views: dict[tuple, tuple] = {}
        self._held = 0
        self._lru: dict[tuple, torch.Tensor] = {}  # the last few chunks asked for
        self._recent: dict[tuple, torch.Tensor] = {}  # words in the current arena, while a hold lasts
        self._previous: dict[tuple, torch.Tensor] = {}  # the last step's words, kept for its deferred update
        self._arenas: dict[tuple, Arena] = {}

    # ------------------------------------------------------------ plain paths
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

    @property
    def masked(self) -> bool:
        return self.mask is not None and not self.mask.identity

    def full(self, p: torch.Tensor, step: int, probe: int, param_index: int, dtype=None) -> torch.Tensor:
        """The whole direction of one parameter, as a new tensor (reference path; ``p`` holds the
        reference values a mask may read)."""
        z = direction(p.shape, self.kind, self.seed, step, probe, param_index, dtype=dtype or p.dtype,
                      device=p.device)
        if self.masked:
            z.mul_(_as_factor(self.mask.whole(p.detach(), self.seed, step, param_index), z))
        return z

    def fill(self, z: torch.Tensor, step: int, probe: int, param_index: int, chunk: int,
             ref: torch.Tensor | None = None) -> None:
        """Fill the 1-D ``z`` with chunk ``chunk`` of direction ``(step, probe, param_index)``; ``ref``: the
        reference values of those entries (for a mask that reads them)."""
        fill_chunk(z, self.kind, chunk_seed(self.seed, step, probe, param_index, chunk))
        if self.masked:
            # multiply rather than masked_fill_ (several times slower on CPU); dropped entries become
            # +-0.0, which perturb and update by exactly nothing
            start = chunk * CHUNK
            z.mul_(_as_factor(self.mask.range(self.seed, step, param_index, start, start + z.numel(),
                                              start + z.numel(), ref, z.device), z))

    def chunks(self, p: torch.Tensor, step: int, probe: int, param_index: int, dtype=None):
        """Yield ``(start, stop, z_chunk)`` over ``p.view(-1)``; ``z_chunk`` is a reused scratch view (a mask
        reads ``p``'s current values of the chunk as its reference)."""
        n = p.numel()
        buf = self.scratch(dtype or p.dtype, p.device, n)
        flat = p.detach().reshape(-1)
        for c, start in enumerate(range(0, n, CHUNK)):
            stop = min(start + CHUNK, n)
            z = buf[: stop - start]
            self.fill(z, step, probe, param_index, c, flat[start:stop])
            yield start, stop, z

    # ----------------------------------------------------- held random words
    def _chunk_values(self, seed: int, n: int, dtype, device) -> torch.Tensor:
        """One chunk's values, cached with the last few chunks asked for (until :meth:`release`):
        Gaussian values, or for Rademacher the chunk's random int64 words (bit ``k`` of the little-endian
        byte stream is the sign of element ``k``: bit ``k & 7`` of byte ``k >> 3``)."""
        key = (seed, n, device)  # (a torch.device: every caller passes one; the kind never changes)
        vals = self._lru.get(key)
        if vals is None:
            vals = self._recent.get(key)
        if vals is None:
            vals = self._previous.get(key)
        if vals is not None:
            return vals
        if self.kind == "gaussian":
            vals = torch.empty(n, dtype=dtype, device=device)
            fill_chunk(vals, "gaussian", seed)
        else:
            words = (n + 63) // 64
            arena = self._arena(device)
            in_arena = self._held and arena.fits(words)
            vals = random_words(arena.take(words) if in_arena else
                                torch.empty(words, dtype=torch.int64, device=device), seed)
            if in_arena:
                self._recent[key] = vals
                return vals
        if len(self._lru) >= 4:  # a few probes' chunks, so that blockwise multi-term passes do not regenerate
            del self._lru[next(iter(self._lru))]
        self._lru[key] = vals
        return vals

    def _arena(self, device) -> Arena:
        key = ("current", str(device))
        if key not in self._arenas:
            self._arenas[key] = Arena(device)
        return self._arenas[key]

    def release(self) -> None:
        """Drop the cached chunks (at most four chunks of memory), unless :meth:`hold` keeps them."""
        if not self._held:
            self._lru, self._recent, self._previous = {}, {}, {}
            for arena in self._arenas.values():
                arena.reset()
            if self.mask is not None:
                self.mask.release()

    @contextlib.contextmanager
    def hold(self):
        """Keep Rademacher chunks' random words between passes for the duration (one ZO step: every
        pass and the update read the same directions), so each chunk is drawn once per step. Values
        are unchanged.

        The words (1/8 byte per perturbed entry, at most :data:`~forwardonly.optim.perturb.arena.HOLD_BYTES`; chunks past that are drawn
        again as without a hold) go into a bump-allocated arena kept and reused from step to step, so
        that thousands of small, short-lived tensors do not fragment the heap between the forward's
        activations. Gaussian chunks are never held (4 bytes per entry). Setting ``carry = True``
        before the outermost hold ends keeps its words through the next hold (for a deferred update):
        two arenas, so at most two steps' words are alive."""
        self._held += 1
        try:
            yield self
        finally:
            self._held -= 1
            if self._held == 0 and self.carry:
                self.carry = False
                for key in [k for k in self._arenas if k[0] == "current"]:
                    prev = self._arenas.get(("previous", key[1]))
                    self._arenas[("previous", key[1])] = self._arenas.pop(key)
                    if prev is not None:
                        prev.reset()
                        self._arenas[key] = prev
                self._previous, self._recent, self._lru = self._recent, {}, {}
            elif self._held == 0:
                self.release()

    # ---------------------------------------------------------- blockwise paths
    @staticmethod
    def _pieces(numel: int, start: int, stop: int):
        """Split ``[start, stop)`` of a ``numel``-element parameter at chunk borders: ``(c, clen, a, b)``."""
        pos = start
        while pos < stop:
            c = pos // CHUNK
            base = c * CHUNK
            clen = min(CHUNK, numel - base)
            end = min(stop, base + clen)
            yield c, clen, pos - base, end - base
            pos = end

    def _uses_native(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """Whether ``a`` and ``b`` (a block and its source) go through the native kernel (called per block:
        the checks that do not depend on the tensors are made once)."""
        ok = self._native_ok
        if ok is None:
            ok = self._native_ok = self.native and self.kind == "rademacher" and self.mask is None
        return (ok and a.dtype is _F32 and b.dtype is _F32 and a.is_cpu and b.is_cpu
                and a.is_contiguous() and b.is_contiguous() and _native.library() is not None)

    def _range_values(self, vals, a: int, b: int, n: int, dtype, device, step: int, param_index: int,
                      c: int, clen: int, ref: torch.Tensor | None = None) -> torch.Tensor:
        """Entries ``[a, b)`` of one chunk's direction (masked; ``ref``: their reference values), from its
        held values."""
        if self.kind == "gaussian":
            z = vals[a:b]
        else:
            z_buf = self._range_scratch(n + 16, dtype, device)
            s_buf = self._range_scratch(n // 8 + 2, torch.int64, device, slot="signs")
            lo, hi = a // 8, (b + 7) // 8
            # one 8-byte row (eight int8 signs) per random byte, then one widening copy: the same
            # values as indexing a table of eight dtype signs per byte, at a third of the traffic
            packed = s_buf[: hi - lo]
            idx = vals.view(torch.uint8)[lo:hi].to(torch.int32)
            torch.index_select(packed_sign_table(device), 0, idx, out=packed)
            rows = z_buf[: (hi - lo) * 8]
            rows.copy_(packed.view(torch.int8))
            z = rows[a - 8 * lo : b - 8 * lo]
        if self.masked:
            base = c * CHUNK
            m = _as_factor(self.mask.range(self.seed, step, param_index, base + a, base + b, base + clen, ref, device), z)
            z = z * m if self.kind == "gaussian" else z.mul_(m)  # never write into held Gaussian values
        return z

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
        native = self._uses_native(dst, src)
        ref = src
        if self.masked and self.mask.needs_values and len(terms) > 1 and dst.data_ptr() == src.data_ptr():
            ref = src.clone()  # the mask reads the values before this update, not between its terms
        if native and len(terms) == 1 and start // CHUNK == (start + n - 1) // CHUNK:
            # the common case (one term, inside one chunk), without the general loop's bookkeeping
            (probe, coef), = terms
            c = start // CHUNK
            words = self._chunk_values(chunk_seed(self.seed, step, probe, param_index, c),
                                       min(CHUNK, numel - c * CHUNK), dst.dtype, dst.device)
            _native.sign_add_f32(dst, src, words, start - c * CHUNK, coef)
            return
        for j, (probe, coef) in enumerate(terms):
            for c, clen, a, b in self._pieces(numel, start, start + n):
                o = c * CHUNK + a - start
                d, s = dst[o : o + b - a], src[o : o + b - a]
                vals = self._chunk_values(chunk_seed(self.seed, step, probe, param_index, c), clen,
                                          dst.dtype, dst.device)
                if native:  # one pass, reading the random bits directly (bitwise the torch path's values)
                    _native.sign_add_f32(d, s if j == 0 else d, vals, a, coef)
                    continue
                z = self._range_values(vals, a, b, n, dst.dtype, dst.device, step, param_index, c, clen,
                                       ref[o : o + b - a])
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
        if not (len(fold_terms) == 1 and len(terms) == 1 and self._uses_native(w, dst)):
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
        key = (slot, dtype, str(device))
        buf = self._ranges.get(key)
        if buf is None or buf.numel() < n:
            buf = self._ranges[key] = torch.empty(n, dtype=dtype, device=device)
        return buf

    def matrix_scratch(self, rows: int, cols: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``rows x cols`` matrix on the start of the ``"w"`` range scratch, and its flat view; the
        views are kept until the scratch grows, so a layer's repeated calls do not rebuild them."""
        key = (rows, cols, dtype, device)
        hit = self._matrix_views.get(key)
        if hit is not None and self._ranges.get(("w", dtype, str(device))) is hit[0]:
            return hit[1], hit[2]
        base = self._range_scratch(rows * cols, dtype, device, slot="w")
        flat = base[: rows * cols]
        if len(self._matrix_views) > 64:
            self._matrix_views.clear()
        self._matrix_views[key] = (base, flat, flat.view(rows, cols))
        return flat, self._matrix_views[key][2]

    def perturbed_matrix(self, w: torch.Tensor, step: int, terms: Sequence[tuple[int, float]], param_index: int,
                         fold=None) -> torch.Tensor:
        """``w + sum_k coef_k z_k`` for a 2-D ``w`` in the shared scratch matrix (valid until the next use
        of the scratch); with ``fold = (step, terms)`` a deferred update is first written into ``w`` in the
        same pass (:meth:`fold_perturb_range`). The values of :meth:`perturbed`, bit for bit."""
        rows, cols = w.shape
        n = rows * cols
        flat, mat = self.matrix_scratch(rows, cols, w.dtype, w.device)
        if (fold is None and len(terms) == 1 and n <= CHUNK and w.dtype is _F32 and w.is_cpu and w.is_contiguous()
                and self._uses_native(flat, flat)):
            # the common case straight to the kernel (one term, one chunk; raw pointers, no views made)
            (probe, coef), = terms
            words = self._chunk_values(chunk_seed(self.seed, step, probe, param_index, 0), n, _F32, _CPU)
            _native.sign_add_f32(flat, w, words, 0, coef)
            return mat
        src = w.detach().view(-1)
        if fold is None:
            self.perturb_range(flat, src, step, terms, param_index, n, 0)
        else:
            self.fold_perturb_range(flat, src, fold[0], fold[1], step, terms, param_index, n, 0)
        return mat

    def block_scratch(self, n: int, dtype, device, slot: str = "w") -> torch.Tensor:
        """A reused buffer of at least ``n`` elements for one block of a perturbed weight."""
        return self._range_scratch(n, dtype, device, slot=slot)

    def gather(self, p: torch.Tensor, step: int, probe: int, param_index: int, flat_index: torch.Tensor):
        """``z(step, probe).view(-1)[flat_index]`` for a sorted 1-D ``flat_index``, generating only the
        chunks it touches (and, for Rademacher, reading single bits instead of whole chunks)."""
        out = torch.empty(flat_index.shape, dtype=p.dtype, device=p.device)
        numel = p.numel()
        first, last = int(flat_index[0]) // CHUNK, int(flat_index[-1]) // CHUNK
        borders = torch.arange(first, last + 2, device=flat_index.device) * CHUNK
        cuts = torch.searchsorted(flat_index, borders).tolist()
        masked = self.masked
        flat_p = p.detach().reshape(-1)
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
            if masked:
                idx = flat_index[lo:hi]
                out[lo:hi].mul_(_as_factor(self.mask.at(self.seed, step, param_index, idx, numel, flat_p[idx],
                                                        p.device), out))
        return out

    def add_(self, p: torch.Tensor, step: int, terms: Sequence[tuple[int, float]], param_index: int) -> None:
        """In place: ``p += sum_k coef_k * z(step, probe_k)`` (the update), in cache-sized blocks."""
        if not p.is_contiguous():
            raise ValueError("ZO optimizers need contiguous parameters")
        flat = p.view(-1)
        terms = [(k, c) for k, c in terms if c != 0.0]
        if not terms:
            return
        if not self.blockwise:
            # chunk by chunk, every term before the next chunk: a mask that reads the weights sees each
            # chunk before this update (the same elementwise sums as probe by probe)
            n = flat.numel()
            z = self.scratch(p.dtype, p.device, n)
            for c, start in enumerate(range(0, n, CHUNK)):
                stop = min(start + CHUNK, n)
                zc = z[: stop - start]
                ref = flat[start:stop].clone() if self.masked and self.mask.needs_values and len(terms) > 1 \
                    else flat[start:stop]
                for probe, coef in terms:
                    self.fill(zc, step, probe, param_index, c, ref)
                    flat[start:stop].add_(zc, alpha=coef)
            return
        n = flat.numel()
        if len(terms) == 1 and n <= CHUNK and self._uses_native(p, p):  # one kernel call, in place
            (probe, coef), = terms
            _native.sign_add_f32(p, p, self._chunk_values(chunk_seed(self.seed, step, probe, param_index, 0), n,
                                                          _F32, _CPU), 0, coef)
        else:
            for start in range(0, n, BLOCK):
                block = flat[start : start + BLOCK]
                self.perturb_range(block, block, step, terms, param_index, n, start)
        self.release()

    def perturbed(self, p: torch.Tensor, step: int, terms: Sequence[tuple[int, float]], param_index: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """``p + sum_k coef_k * z(step, probe_k)`` in a new tensor (or ``out``); ``p`` itself is not touched."""
        if out is None:
            out = torch.empty_like(p, memory_format=torch.contiguous_format)
        if len(terms) == 1 and self.blockwise and p.numel() <= CHUNK and self._uses_native(out, p):
            (probe, coef), = terms  # one kernel call (a norm's weight, a bias)
            words = self._chunk_values(chunk_seed(self.seed, step, probe, param_index, 0), p.numel(), _F32, _CPU)
            _native.sign_add_f32(out, p, words, 0, coef)
            return out
        src, dst = p.reshape(-1), out.view(-1)
        if terms and self.blockwise:  # blockwise, reading held random words (the same values, bit for bit)
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


def _as_factor(m: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """A mask's multipliers in ``z``'s dtype (0/1 masks stay boolean): every path multiplies in the
    direction's dtype, so they round alike."""
    return m if m.dtype in (torch.bool, z.dtype) else m.to(z.dtype)
