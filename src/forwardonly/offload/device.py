"""The asynchronous copies of block streaming: CUDA streams and events, or a CPU stand-in.

In copy mode :class:`~forwardonly.offload.stream.BlockStreamer` overlaps compute
with weight transfers. On CUDA the transfers run on a side stream, ordered
against the compute stream with events, from page-locked host memory. Those few
operations sit behind :class:`Streams`, so the streamer's ordering logic runs,
and is tested, on a machine without a GPU:

* :class:`CudaStreams`: ``torch.cuda`` streams and events, pinned host tensors.
* :class:`ThreadStreams`: a CPU stand-in with the same asynchronous semantics.
  Each stream is a worker thread that runs its queue in order; an event is a
  ``threading.Event`` set when its stream reaches it; the compute stream is the
  calling thread (CPU kernels are synchronous, so its events are complete when
  recorded and a wait on it blocks the host). ``lazy=True`` runs a stream's work
  only once something waits for it (an event recorded after it, or a
  synchronize), the latest a GPU may run it, so a missing wait on the compute
  side reads stale weights every time; ``delay_s`` holds every copy back instead,
  for a schedule closer to a GPU's. On the copy side it checks what a GPU would
  only get wrong at random: a copy that touches memory the compute stream
  released (:meth:`Streams.released`) without the copy stream having waited for
  that release raises :class:`HazardError`.

Stream ``None`` means the compute stream in every method.
"""

from __future__ import annotations

import queue
import threading
import time

import torch


class HazardError(RuntimeError):
    """A copy touched memory the compute stream may still use: a wait on its release event is missing."""


def host_empty(shape, dtype, pinned: bool) -> torch.Tensor:
    """Host memory for a tier that feeds an accelerator: page-locked when ``pinned``, so copies from it
    run asynchronously (``non_blocking=True``); ordinary memory otherwise."""
    return torch.empty(shape, dtype=dtype, pin_memory=pinned)


class Streams:
    """What the streamer needs from an accelerator's queues (see the module docstring)."""

    def new_stream(self):
        """A stream for transfers, separate from the compute stream."""
        raise NotImplementedError

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream) -> None:
        """Queue ``dst.copy_(src)`` on ``stream``; returns at once."""
        raise NotImplementedError

    def record(self, stream=None):
        """An event that completes once ``stream`` has run everything queued on it so far."""
        raise NotImplementedError

    def wait(self, event, stream=None) -> None:
        """Work queued on ``stream`` from now on starts after ``event``."""
        raise NotImplementedError

    def released(self, buffer: torch.Tensor):
        """The compute stream's last use of ``buffer`` (for now): an event a copy into or out of it must wait for."""
        return self.record(None)

    def synchronize(self, stream) -> None:
        """Block the host until everything queued on ``stream`` has run."""
        raise NotImplementedError

    def host_empty(self, shape, dtype) -> torch.Tensor:
        """Host memory that copies to the device can read asynchronously."""
        return host_empty(shape, dtype, pinned=True)


class CudaStreams(Streams):
    """``torch.cuda`` streams and events on ``device``."""

    def __init__(self, device):
        self.device = torch.device(device)

    def new_stream(self):
        return torch.cuda.Stream(self.device)

    def copy(self, dst, src, stream) -> None:
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def record(self, stream=None):
        return (stream or torch.cuda.current_stream(self.device)).record_event()

    def wait(self, event, stream=None) -> None:
        (stream or torch.cuda.current_stream(self.device)).wait_event(event)

    def synchronize(self, stream) -> None:
        stream.synchronize()


# ----------------------------------------------------------------------------- the CPU stand-in
class _Event:
    def __init__(self, label: str, stream: _Stream | None = None, index: int = -1):
        self.label, self.stream, self.index = label, stream, index
        self.done = threading.Event()


class _Stream:
    """A worker thread running its queue in order; lazy: item ``i`` waits until something demands it."""

    def __init__(self, name: str, lazy: bool):
        self.name = name
        self.waited: set[_Event] = set()  # events this stream was told to wait for, in queue order
        self.error: BaseException | None = None
        self._q: queue.Queue = queue.Queue()
        self._n = 0
        self._allowed = -1 if lazy else float("inf")
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"forwardonly-{name}", daemon=True)
        self._thread.start()

    def submit(self, fn) -> int:
        with self._cond:
            i, self._n = self._n, self._n + 1
        self._q.put((i, fn))
        return i

    def demand(self, index: int) -> None:
        with self._cond:
            self._allowed = max(self._allowed, index)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            i, fn = self._q.get()
            if fn is None:
                return
            with self._cond:
                self._cond.wait_for(lambda i=i: self._allowed >= i)
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - raised on the host's next wait or synchronize
                self.error = self.error or e

    def close(self) -> None:
        i = self.submit(lambda: None)
        self.demand(i)
        self._q.put((i + 1, None))
        self._thread.join()


class ThreadStreams(Streams):
    """CPU stand-in for :class:`CudaStreams` (see the module docstring).

    Args:
        lazy: run queued work only when it is waited for (default False).
        delay_s: seconds every copy waits on its stream thread before it runs (default 0).

    Example::

        streams = ThreadStreams(lazy=True)
        streamer = BlockStreamer(model, store, mode="copy", streams=streams).attach()
    """

    def __init__(self, lazy: bool = False, delay_s: float = 0.0):
        self.lazy, self.delay_s = lazy, delay_s
        self.streams: list[_Stream] = []
        self.copies = 0
        self._released: dict[tuple[int, int], _Event] = {}  # memory range -> compute's release event
        self._lock = threading.Lock()

    def new_stream(self):
        s = _Stream(f"stream{len(self.streams)}", self.lazy)
        self.streams.append(s)
        return s

    def copy(self, dst, src, stream) -> None:
        with self._lock:
            for t in (dst, src):
                lo, hi = _span(t)
                for (a, b), ev in self._released.items():
                    if a < hi and lo < b and ev not in stream.waited:
                        raise HazardError(f"a copy on {stream.name} touches bytes {lo:#x}-{hi:#x} that the compute "
                                          f"stream released ({ev.label}) without waiting for that release")
            self.copies += 1

        def run():
            if self.delay_s:
                time.sleep(self.delay_s)
            dst.copy_(src)

        stream.submit(run)

    def record(self, stream=None):
        if stream is None:
            ev = _Event("event on compute")
            ev.done.set()  # CPU compute is synchronous: everything queued so far has run
            return ev
        ev = _Event(f"event on {stream.name}", stream)
        ev.index = stream.submit(ev.done.set)
        return ev

    def wait(self, event, stream=None) -> None:
        if stream is None:
            _demand(event)
            event.done.wait()
            self._raise_errors()
        else:
            stream.waited.add(event)

            def wait_for_it():
                _demand(event)
                event.done.wait()

            stream.submit(wait_for_it)

    def released(self, buffer):
        ev = self.record(None)
        ev.label = f"release of {buffer.data_ptr():#x}"
        with self._lock:
            self._released[_span(buffer)] = ev
        return ev

    def synchronize(self, stream) -> None:
        self.wait(self.record(stream))

    def host_empty(self, shape, dtype):
        return torch.empty(shape, dtype=dtype)  # nothing to pin without a device

    def _raise_errors(self) -> None:
        for s in self.streams:
            if s.error is not None:
                e, s.error = s.error, None
                raise RuntimeError(f"{s.name} failed") from e

    def close(self) -> None:
        for s in self.streams:
            s.close()
        self.streams = []


def _demand(event: _Event) -> None:
    if event.stream is not None:
        event.stream.demand(event.index)


def _span(t: torch.Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()
