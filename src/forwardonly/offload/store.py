"""Where the current weights of a streamed run live: a slower tier than the working device.

A :class:`WeightStore` holds one tensor per parameter name, laid out as in a
safetensors file (8-byte little-endian header length, JSON header, one flat
data buffer). Two tiers:

* ``"disk"``: the user's file is validated, then copied to a working copy in
  ``workdir`` that this run owns and maps writable (``mmap``). Tensors are
  views on the mapping, so updates land in the page cache and the kernel writes
  them back; they never count as anonymous memory. The user's file is only read.
* ``"memory"``: tensors are read into host memory (pinned when a CUDA device is
  present, so that copies to it can be asynchronous); the tier for a GPU run.

Everything is checked before a byte is copied: a header that does not parse, a
tensor whose offsets run past the end (a truncated file), overlapping tensors,
non-finite values, or a tier without room raise :class:`WeightsFileError` /
:class:`TierCapacityError` and leave every file as it was.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import shutil
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_path
from .device import host_empty

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
TIERS = ("disk", "memory")
_MAX_HEADER = 100 << 20
_PAGE = mmap.PAGESIZE
_SCAN = 16 << 20  # elements per chunk of the finite-values check
_POPULATE_READ, _POPULATE_WRITE = 22, 23  # madvise advice values (Linux >= 5.14), not in Python's mmap module


class WeightsFileError(UserError):
    """The weights file is malformed, truncated or holds non-finite values."""


class TierCapacityError(UserError):
    """The model does not fit the chosen tier (disk space or host memory)."""


@dataclass(frozen=True)
class Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # byte offsets into the data buffer
    stop: int

    @property
    def nbytes(self) -> int:
        return self.stop - self.start


def read_index(path: str | os.PathLike) -> tuple[int, dict[str, Entry], dict]:
    """Parse and check a safetensors header: ``(data_offset, {name: Entry}, metadata)``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise WeightsFileError(f"{path}: {size} bytes is too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise WeightsFileError(f"{path}: header length {n} does not fit a file of {size} bytes "
                                       "(truncated or not a safetensors file)")
            raw = f.read(n)
    except FileNotFoundError:
        raise WeightsFileError(f"{path}: no such weights file") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsFileError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise WeightsFileError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    entries: dict[str, Entry] = {}
    for name, spec in header.items():
        try:
            dtype = DTYPES[spec["dtype"]]
            shape = tuple(int(s) for s in spec["shape"])
            start, stop = (int(v) for v in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WeightsFileError(f"{path}: tensor {name!r} has a malformed header entry: {spec!r}") from None
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(s < 0 for s in shape) or stop - start != numel * dtype.itemsize or start < 0:
            raise WeightsFileError(f"{path}: tensor {name!r} ({spec['dtype']} {list(shape)}) has byte range "
                                   f"[{start}, {stop}), which does not match its size")
        if stop > data_len:
            raise WeightsFileError(f"{path}: tensor {name!r} ends at byte {8 + n + stop} but the file has {size} "
                                   "bytes (truncated)")
        entries[name] = Entry(dtype, shape, start, stop)
    spans = sorted((e.start, e.stop, k) for k, e in entries.items() if e.nbytes)
    for (_, stop_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < stop_a:
            raise WeightsFileError(f"{path}: tensors {a!r} and {b!r} overlap")
    return 8 + n, entries, metadata


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


class WeightStore:
    """The weights of a run on a slower tier; see :mod:`forwardonly.offload.store`.

    Args:
        source: the model's safetensors file (read only, never modified).
        workdir: where the ``"disk"`` tier keeps its working copy (required for that tier).
        tier: ``"disk"`` (default) or ``"memory"``.
        capacity: bytes the tier may use; default: free space of ``workdir`` (disk) or
            ``MemAvailable`` (memory). A model larger than this is refused up front.
        check_finite: scan every floating tensor for NaN/Inf before training (default True).

    Example::

        store = WeightStore("model.safetensors", workdir="runs/a/offload")
        w = store.tensor("model.layers.0.mlp.up_proj.weight")   # a view on the working copy
    """

    def __init__(self, source, workdir=None, tier: str = "disk", *, capacity: int | None = None,
                 check_finite: bool = True, pin: bool | None = None):
        if tier not in TIERS:
            raise ValueError(f"Invalid tier: {tier!r} (expected one of {TIERS})")
        if tier == "disk" and workdir is None:
            raise ValueError("the disk tier needs a workdir for its working copy")
        self.source = Path(source)
        self.tier = tier
        self.data_offset, self.entries, self.metadata = read_index(self.source)
        size = self.source.stat().st_size
        if tier == "disk":
            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(workdir).free if capacity is None else capacity
            if size > free:
                raise TierCapacityError(f"{self.source}: the weights need {size} bytes on the disk tier but "
                                        f"{workdir} has {free} bytes free")
        else:
            need = sum(e.nbytes for e in self.entries.values())
            free = _available_memory() if capacity is None else capacity
            if need > free:
                raise TierCapacityError(f"{self.source}: the weights need {need} bytes of host memory but "
                                        f"{free} bytes are available")
        self._mm = self._file = self._buf = None
        self._populate = True
        src = self._map(self.source)
        try:
            if check_finite:
                self._check_finite(src)
            if tier == "disk":
                self.path = workdir / "weights.safetensors"
                with atomic_path(self.path) as tmp:  # a crash never leaves a half copy that looks whole
                    shutil.copyfile(self.source, tmp)
                self._file = open(self.path, "r+b")  # noqa: SIM115 - held for the store's lifetime
                self._mm = mmap.mmap(self._file.fileno(), 0)
                self._buf = np.frombuffer(self._mm, dtype=np.uint8)
                self._tensors = {k: self._view(self._buf, e) for k, e in self.entries.items()}
            else:
                self.path = None
                pin = torch.cuda.is_available() if pin is None else pin
                self._tensors = {}
                for k, e in self.entries.items():
                    t = host_empty(e.shape, e.dtype, pinned=pin)
                    t.copy_(self._view(src[1], e))
                    self._tensors[k] = t
                    self._release(src[0], k)
        finally:
            del src

    # ----------------------------------------------------------------- mapping
    def _map(self, path: Path):
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return mm, np.frombuffer(mm, dtype=np.uint8)

    def _view(self, buf: np.ndarray, e: Entry) -> torch.Tensor:
        if not e.nbytes:
            return torch.empty(e.shape, dtype=e.dtype)
        a = buf[self.data_offset + e.start: self.data_offset + e.stop]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the read-only source mapping is only ever read
            t = torch.from_numpy(a)
        return t.view(e.dtype).view(e.shape)

    def _check_finite(self, src) -> None:
        buf = src[1]
        for name, e in self.entries.items():
            if not e.dtype.is_floating_point or not e.nbytes:
                continue
            flat = self._view(buf, e).view(-1)
            for s in range(0, flat.numel(), _SCAN):
                if not torch.isfinite(flat[s: s + _SCAN]).all():
                    raise WeightsFileError(f"{self.source}: tensor {name!r} holds NaN or Inf values "
                                           "(corrupt weights)")
            self._release(src[0], name)

    def _release(self, mm: mmap.mmap, name: str) -> None:
        """Unmap ``name``'s pages of the read-only source mapping once they are read. File pages a process
        has mapped count in its RSS: reading the whole file through one mapping would otherwise raise the
        run's peak RSS to the file's size (plus the copy, on the memory tier). The page cache keeps them."""
        if hasattr(mm, "madvise"):  # not on Windows
            for lo, n in self._ranges([name]):
                mm.madvise(mmap.MADV_DONTNEED, lo, n)

    # ------------------------------------------------------------------ access
    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def tensor(self, name: str) -> torch.Tensor:
        """The current value of ``name`` on the tier (a view: writes go to the store)."""
        return self._tensors[name]

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """``out <- name``. On the disk tier into CPU memory this is one ``pread``: the bytes are
        copied from the page cache without faulting the mapping in page by page."""
        if self._file is not None and out.device.type == "cpu" and out.is_contiguous() and out.numel():
            view = memoryview(out.view(-1).view(torch.uint8).numpy())
            pos, off = 0, self.data_offset + self.entries[name].start
            while pos < len(view):
                n = os.preadv(self._file.fileno(), [view[pos:]], off + pos)
                if n <= 0:
                    raise WeightsFileError(f"{self.path}: short read of {name!r} (file truncated while in use?)")
                pos += n
        else:
            out.copy_(self._tensors[name])

    def write_from(self, name: str, src: torch.Tensor) -> None:
        """``name <- src``; on the disk tier from CPU memory one ``pwrite`` (no write faults on the mapping)."""
        if self._file is not None and src.device.type == "cpu" and src.is_contiguous() and src.numel():
            view = memoryview(src.view(-1).view(torch.uint8).numpy())
            pos, off = 0, self.data_offset + self.entries[name].start
            while pos < len(view):
                pos += os.pwrite(self._file.fileno(), view[pos:], off + pos)
        else:
            self._tensors[name].copy_(src)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def _ranges(self, names):
        for k in names:
            e = self.entries[k]
            if e.nbytes:
                lo = (self.data_offset + e.start) // _PAGE * _PAGE
                yield lo, self.data_offset + e.stop - lo

    def prefetch(self, names, write: bool = False) -> None:
        """Bring ``names`` into the page cache and map them into this process (disk tier).

        With ``write`` the pages are mapped writable too (``MADV_POPULATE_WRITE``), so an
        update that follows takes no write fault per page; run from a background thread,
        this takes the page-table work off the thread that computes.
        """
        if self._mm is None:
            return
        advice = _POPULATE_WRITE if write else _POPULATE_READ
        for lo, n in self._ranges(names):
            if self._populate:
                try:
                    self._mm.madvise(advice, lo, n)
                    continue
                except OSError:  # kernels before 5.14
                    self._populate = False
            self._mm.madvise(mmap.MADV_WILLNEED, lo, n)
            int(self._buf[lo: lo + n: _PAGE].sum())  # one read per page maps it into this process

    def drop(self, names) -> None:
        """Unmap ``names`` from this process (disk tier). Data is safe: the mapping is shared,
        dirty pages stay in the page cache until written back."""
        if self._mm is None:
            return
        for lo, n in self._ranges(names):
            self._mm.madvise(mmap.MADV_DONTNEED, lo, n)

    def sync(self) -> None:
        """Flush the working copy to disk (disk tier)."""
        if self._mm is not None:
            self._mm.flush()

    def save(self, dest, current: dict[str, torch.Tensor] | None = None) -> None:
        """Write a safetensors file at ``dest`` (atomically) with the store's layout and header:
        tensors named in ``current`` from there, every other one from the store. Streams tensor by
        tensor, so no model-sized buffer is allocated."""
        current = current or {}
        with open(self.source, "rb") as f:
            header = f.read(self.data_offset)
        with atomic_path(dest) as tmp, open(tmp, "wb") as out:
            out.write(header)
            for name, e in sorted(self.entries.items(), key=lambda kv: kv[1].start):
                t = current.get(name, self._tensors[name])
                if tuple(t.shape) != e.shape or t.dtype != e.dtype:
                    raise ValueError(f"cannot save {name!r}: {t.dtype} {list(t.shape)} does not match the "
                                     f"store's {e.dtype} {list(e.shape)}")
                out.seek(self.data_offset + e.start)
                flat = t.detach().reshape(-1)
                step = max(1, (64 << 20) // max(1, e.dtype.itemsize))  # 64 MB pieces: no model-sized buffer
                out.writelines(flat[s: s + step].cpu().contiguous().view(torch.uint8).numpy().tobytes()
                               for s in range(0, flat.numel(), step))
            out.truncate(self.data_offset + max((e.stop for e in self.entries.values()), default=0))

    def close(self) -> None:
        """Release the mapping. Views handed out before must be dropped first; the working copy stays."""
        self._tensors = {}
        self._buf = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a view is still alive somewhere; the mapping goes with it
                pass
            self._mm = None
        if self._file is not None:
            self._file.close()
            self._file = None
