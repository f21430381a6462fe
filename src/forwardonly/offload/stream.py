"""Block streaming: a model's blocks are brought from a :class:`WeightStore` one at a time.

:class:`BlockStreamer` is a hook object with a reversible lifecycle
(:meth:`~BlockStreamer.attach` / :meth:`~BlockStreamer.detach`). Attached, every
parameter of the model's stack of blocks (:func:`find_blocks`) holds a
one-element :func:`placeholder`; a forward pre-hook on block ``i`` makes it
resident (:meth:`acquire`) and starts bringing block ``i + 1`` in the
background, and the forward hook releases it (:meth:`release`). Parameters
outside the blocks (embeddings, final norm, head) stay resident.

Two ways of being resident:

* ``"map"`` (store and compute on the same device, e.g. the disk tier on CPU):
  parameters point straight at the store's memory-mapped tensors, so nothing is
  copied and an update made in place lands in the working copy. Prefetching
  asks the kernel for the next block's pages and faults them in from a
  background thread; releasing unmaps the block's pages from the process.
* ``"copy"`` (e.g. the memory tier feeding a GPU): two device buffers (slots),
  each the size of the largest block. A background worker copies block ``i+1``
  into the free slot while block ``i`` computes, and copies a block that was
  updated while resident back to the store on release. On CUDA the copies run
  on a side stream, ordered against the compute stream with events
  (:mod:`forwardonly.offload.device`; its CPU stand-in runs the same logic in
  tests); elsewhere the worker thread copies synchronously. One FIFO worker
  orders every copy, so a slot is never refilled before its write-back is done.

``on_load(block)`` runs when a block becomes resident and before any forward
uses it (the deferred ZO update goes there); it returns True when it changed
the weights. A ``gate`` lets two forwards share one residency (see
:mod:`forwardonly.offload.zo`).
"""

from __future__ import annotations

import functools
import queue
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from .blocks import find_blocks, is_placeholder, placeholder
from .device import CudaStreams, Streams
from .store import TierCapacityError, WeightStore

MODES = ("map", "copy")
_ALIGN = 64


@dataclass
class Block:
    index: int
    module: nn.Module
    params: list[tuple[str, nn.Parameter]]
    nbytes: int
    slot: int | None = None
    ready: threading.Event | None = None  # set when a background load is done
    event: object = None  # accelerator event recorded after the load
    resident: bool = False
    dirty: bool = False
    views: dict = field(default_factory=dict)  # slot -> [tensor per param]


class _Worker:
    """One background thread running tasks in order."""

    def __init__(self):
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="forwardonly-offload", daemon=True)
        self._thread.start()
        self.error: BaseException | None = None

    def _run(self):
        while True:
            fn, done = self._q.get()
            if fn is None:
                return
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - surfaced on the next wait
                self.error = e
            finally:
                done.set()

    def submit(self, fn) -> threading.Event:
        done = threading.Event()
        self._q.put((fn, done))
        return done

    def wait(self, done: threading.Event) -> None:
        done.wait()
        if self.error is not None:
            e, self.error = self.error, None
            raise RuntimeError("background weight transfer failed") from e

    def stop(self):
        self.wait(self.submit(lambda: None))
        self._q.put((None, None))
        self._thread.join()


class BlockStreamer:
    """Stream a model's blocks from a :class:`WeightStore` through forward hooks.

    Args:
        model: the model; its parameters are matched to the store by name.
        store: the tier holding the weights.
        device: where blocks compute (default: the device of the model's parameters).
        mode: ``"map"`` or ``"copy"`` (default: ``"map"`` when the store's tensors
            already live on ``device``, else ``"copy"``).
        prefetch: bring the next block in the background (default True).
        drop_pages: in map mode, unmap a block's pages on release (default True).
        capacity: bytes of the working device this may use (default: free memory of a CUDA
            device, unchecked elsewhere). Copy mode needs two block slots plus the resident
            parameters; less raises :class:`TierCapacityError` before anything moves.
        streams: the asynchronous copies of copy mode (:class:`~forwardonly.offload.device.Streams`;
            default :func:`default_streams`: CUDA streams on a CUDA device, none elsewhere, where
            the background worker copies synchronously).

    Example::

        streamer = BlockStreamer(model, WeightStore("m.safetensors", "work/")).attach()
        logits = model(ids).logits      # blocks come and go one at a time
        streamer.detach()               # the model holds its weights again
    """

    def __init__(self, model: nn.Module, store: WeightStore, device=None, mode: str | None = None,
                 prefetch: bool = True, drop_pages: bool = True, capacity: int | None = None,
                 streams: Streams | None = None):
        self.model, self.store = model, store
        self.capacity = capacity
        first = next(model.parameters())
        self.device = torch.device(device) if device is not None else first.device
        store_device = torch.device("cpu")
        if mode is None:
            mode = "map" if self.device == store_device else "copy"
        if mode not in MODES:
            raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
        if mode == "map" and self.device != store_device:
            raise ValueError(f"map mode needs the compute device to be the store's ({store_device}), got {self.device}")
        self.mode, self.prefetch_next, self.drop_pages = mode, prefetch, drop_pages
        self.stack_name, stack = find_blocks(model)
        self.blocks: list[Block] = []
        in_blocks = set()
        for i, mod in enumerate(stack):
            params = [(f"{self.stack_name}.{i}.{n}", p) for n, p in mod.named_parameters()]
            for name, p in params:
                self._check(name, p)
                in_blocks.add(id(p))
            nbytes = sum(_aligned(self.store.entries[n].nbytes) for n, _ in params)
            self.blocks.append(Block(i, mod, params, nbytes))
        self.resident = [(n, p) for n, p in model.named_parameters() if id(p) not in in_blocks]
        self._aliases = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            self._aliases.setdefault(id(p), []).append(n)
        self.on_load = None
        self.written: set[int] | None = None  # blocks that on_load may update (None: all)
        self.gate = None
        self._handles: list = []
        self._worker: _Worker | None = None
        self._slots: list[torch.Tensor] = []
        self._free: list[int] = []
        self._streams = streams
        self._stream = None
        self._freed: list = []

    def _check(self, name: str, p: torch.Tensor) -> None:
        e = self.store.entries.get(name)
        if e is None:
            raise ValueError(f"parameter {name!r} is not in the weights file {self.store.source}")
        if e.shape != tuple(p.shape) or e.dtype != p.dtype:
            raise ValueError(f"parameter {name!r} is {p.dtype} {list(p.shape)} in the model but {e.dtype} "
                             f"{list(e.shape)} in {self.store.source}")

    def working_set(self) -> int:
        """Bytes the working device holds at most: resident parameters, plus two block slots in copy mode."""
        if self.mode == "map":
            return 0  # everything lives in the store's mapping
        resident = sum(p.numel() * p.element_size() for _, p in self.resident)
        return resident + 2 * max(b.nbytes for b in self.blocks)

    def _check_capacity(self) -> None:
        cap = self.capacity
        if cap is None and self.device.type == "cuda":
            cap = torch.cuda.mem_get_info(self.device)[0]
        need = self.working_set()
        if cap is not None and need > cap:
            raise TierCapacityError(f"streaming {self.store.source} needs {need} bytes on {self.device} (resident "
                                    f"parameters and two blocks) but {cap} bytes are available")

    # --------------------------------------------------------------- lifecycle
    def attach(self) -> BlockStreamer:
        """Point the resident parameters at their weights, empty the blocks, register the hooks."""
        if self._handles:
            raise RuntimeError("BlockStreamer is already attached")
        self._check_capacity()
        for name, p in self.resident:
            src = next((a for a in self._aliases[id(p)] if a in self.store), None)
            if src is not None:
                self._check(src, p)
                t = self.store.tensor(src)
                # small and always resident: used in place wherever the store already is on the device
                p.data = t if t.device == self.device else t.to(self.device, copy=True)
            elif is_placeholder(p.data) or p.device.type == "meta":
                raise ValueError(f"parameter {name!r} is neither in {self.store.source} nor materialised")
        for b in self.blocks:
            for _, p in b.params:
                p.data = placeholder(p, self.device)
            self._handles.append(b.module.register_forward_pre_hook(functools.partial(self._pre, b), prepend=True))
            self._handles.append(b.module.register_forward_hook(functools.partial(self._post, b)))
        self._worker = _Worker()
        if self.mode == "copy":
            size = max(b.nbytes for b in self.blocks)
            self._slots = [torch.empty(size, dtype=torch.uint8, device=self.device) for _ in range(2)]
            self._free = [0, 1]
            self._freed = [None, None]
            if self._streams is None:
                self._streams = default_streams(self.device)
            if self._streams is not None:
                self._stream = self._streams.new_stream()
        return self

    def detach(self, materialize: bool = True) -> None:
        """Remove the hooks. With ``materialize`` every parameter gets its current weights in
        ordinary (device) memory; without, block parameters keep their placeholders."""
        self.release_all()
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        self.sync()
        if materialize:
            for name, p in self.resident:
                if any(a in self.store and p.data_ptr() == self.store.tensor(a).data_ptr()
                       for a in self._aliases[id(p)]):
                    p.data = p.data.clone()
            for b in self.blocks:
                for name, p in b.params:
                    p.data = self.store.tensor(name).to(self.device, copy=True)
        self._slots, self._free = [], []
        for b in self.blocks:
            b.views.clear()

    # --------------------------------------------------------------- residency
    def _views(self, b: Block, slot: int) -> list[torch.Tensor]:
        v = b.views.get(slot)
        if v is None:
            v, off, buf = [], 0, self._slots[slot]
            for name, p in b.params:
                n = self.store.entries[name].nbytes
                v.append(buf[off: off + n].view(p.dtype).view(p.shape))
                off += _aligned(n)
            b.views[slot] = v
        return v

    def _load(self, b: Block) -> None:
        """Queue the transfer of ``b`` to the device (copy mode: into a free slot)."""
        if self.mode == "map":
            names = [n for n, _ in b.params]
            write = self.written is None or b.index in self.written
            b.ready = self._worker.submit(lambda: self.store.prefetch(names, write=write))
            return
        b.slot = self._free.pop()
        views = self._views(b, b.slot)
        freed = self._freed[b.slot]  # the compute stream's last use of this slot

        def copy_in():
            if self._stream is not None:
                s = self._streams
                if freed is not None:
                    s.wait(freed, self._stream)
                for (name, _), v in zip(b.params, views):
                    s.copy(v, self.store.tensor(name), self._stream)
                b.event = s.record(self._stream)
            else:
                for (name, _), v in zip(b.params, views):
                    self.store.read_into(name, v)

        b.ready = self._worker.submit(copy_in)

    def acquire(self, i: int) -> None:
        """Make block ``i`` resident (waiting for its transfer), run ``on_load``, prefetch ``i + 1``."""
        b = self.blocks[i]
        if b.resident:
            return
        for other in self.blocks:
            if other.resident:
                self.release(other.index)
            elif other is not b and other.ready is not None:  # a prefetch that guessed wrong
                self._discard(other)
        if b.ready is None:
            self._load(b)
        self._worker.wait(b.ready)
        b.ready = None
        if self.mode == "map":
            for name, p in b.params:
                p.data = self.store.tensor(name)
        else:
            if b.event is not None:
                self._streams.wait(b.event)  # the compute stream reads the slot after the copy in
                b.event = None
            for (_, p), v in zip(b.params, self._views(b, b.slot)):
                p.data = v
        b.resident = True
        b.dirty = bool(self.on_load(b)) if self.on_load is not None else False
        if self.prefetch_next and len(self.blocks) > 1:
            nxt = self.blocks[(i + 1) % len(self.blocks)]
            if nxt.ready is None and (self.mode == "map" or self._free):
                self._load(nxt)

    def release(self, i: int) -> None:
        """Give block ``i`` back: its parameters return to placeholders; copy mode writes
        updated weights back to the store (in the background)."""
        b = self.blocks[i]
        if not b.resident:
            return
        for _, p in b.params:
            p.data = placeholder(p, self.device)
        b.resident = False
        if self.mode == "map":
            if self.drop_pages:
                self.store.drop([n for n, _ in b.params])
            return
        slot, b.slot = b.slot, None
        after = None
        if self._stream is not None:  # kernels queued on the compute stream may still read the slot
            after = self._freed[slot] = self._streams.released(self._slots[slot])
        if b.dirty:
            views = self._views(b, slot)

            def copy_out():
                if self._stream is not None:
                    self._streams.wait(after, self._stream)
                    for (name, _), v in zip(b.params, views):
                        self._streams.copy(self.store.tensor(name), v, self._stream)
                else:
                    for (name, _), v in zip(b.params, views):
                        self.store.write_from(name, v)

            self._worker.submit(copy_out)
        b.dirty = False
        self._free.append(slot)

    def _discard(self, b: Block) -> None:
        self._worker.wait(b.ready)
        b.ready = None
        if b.slot is not None:
            self._free.append(b.slot)
            b.slot = None

    def release_all(self) -> None:
        for b in self.blocks:
            if b.resident:
                self.release(b.index)
            elif b.ready is not None:
                self._discard(b)

    def sync(self) -> None:
        """Wait until every write-back has reached the store."""
        if self._worker is not None:
            self._worker.wait(self._worker.submit(lambda: None))
        if self._stream is not None:
            self._streams.synchronize(self._stream)

    # ------------------------------------------------------------------- hooks
    def _pre(self, b: Block, module, args):
        if self.gate is None or self.gate.enter(b.index):
            self.acquire(b.index)

    def _post(self, b: Block, module, args, output):
        if self.gate is None:
            self.release(b.index)
        else:
            self.gate.exit(b.index, self.release)

    def current(self) -> dict[str, torch.Tensor]:
        """The model's current weights by store name, block weights read from the store."""
        self.sync()
        out = {n: self.store.tensor(n) for b in self.blocks for n, _ in b.params}
        for _, p in self.resident:
            for a in self._aliases[id(p)]:
                if a in self.store:
                    out[a] = p.data
        return out


def default_streams(device: torch.device) -> Streams | None:
    """The streams copy mode uses on ``device`` unless given: CUDA's on a CUDA device, else none."""
    return CudaStreams(device) if device.type == "cuda" else None


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN
