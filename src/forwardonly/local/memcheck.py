"""Count what autograd keeps alive: the check behind the "memory-honest" claim.

:class:`SavedTensorMeter` installs ``saved_tensors_hooks`` for the duration of a
``with`` block. Every tensor autograd saves for a backward pass is wrapped in a
holder that decrements the live count when autograd drops it (after backward,
or when the graph is freed). Parameters are not counted: saving them allocates
nothing; neither is a sparse tensor (a graph's fixed adjacency). ``peak_bytes`` is then the most activation memory any graph held at one
time -- one layer's worth for a local method, the whole network's for backprop.

Example::

    with SavedTensorMeter(model) as meter:
        model.train_step(x, y)
    meter.peak_bytes, meter.peak_count
"""

from __future__ import annotations

import torch


class _Held:
    __slots__ = ("meter", "nbytes", "tensor")

    def __init__(self, tensor, meter, nbytes):
        self.tensor, self.meter, self.nbytes = tensor, meter, nbytes

    def __del__(self):
        self.meter._release(self.nbytes)


class SavedTensorMeter:
    """Peak count and bytes of non-parameter tensors saved for backward inside the block."""

    def __init__(self, model: torch.nn.Module | None = None):
        self._params = {p.data_ptr() for p in model.parameters()} if model is not None else set()
        self.live_count = self.live_bytes = self.peak_count = self.peak_bytes = 0
        self._ctx = None

    def _pack(self, t: torch.Tensor):
        # a sparse tensor (a graph's fixed adjacency) exists anyway: saving it allocates nothing
        if t.layout != torch.strided or t.data_ptr() in self._params:
            return t
        nbytes = t.numel() * t.element_size()
        self.live_count += 1
        self.live_bytes += nbytes
        self.peak_count = max(self.peak_count, self.live_count)
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return _Held(t, self, nbytes)

    def _unpack(self, held):
        return held.tensor if isinstance(held, _Held) else held

    def _release(self, nbytes: int) -> None:
        self.live_count -= 1
        self.live_bytes -= nbytes

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        self._ctx = None
        return False
