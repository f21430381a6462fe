"""Per-thread perturbation for the dual forward.

The two forwards of a dual pair run in two threads, one at ``w + eps z`` and one
at ``w - eps z``, so the perturbation cannot be global state the way
:class:`~forwardonly.optim._perturb.Perturbation` is. :class:`PerThread` is one
pair of global forward hooks that hands each module to the calling thread's
:class:`ThreadPerturbation` (threads without one are left alone).
:class:`ThreadPerturbation` makes the same choices as ``Perturbation`` (the same
module gets the fused path where the optimizer uses it, every other parameter a
whole perturbed copy through the same operations), which is what keeps the
streamed run bitwise equal to the in-memory one. It never writes to a weight.

Whole perturbed copies go into buffers kept across steps (``pool``; the k-th
live copy uses buffer k) rather than fresh allocations: a second thread
allocates from another malloc arena, whose large blocks are mapped and faulted
in page by page every time, which cost more system time than the forward.
"""

from __future__ import annotations

import threading

import torch
from torch.nn.modules import module as nn_module

try:  # the fused Linear/Embedding path, where the optimizer package has it
    from ..optim._fused import FusedWeight, fusable
except ImportError:  # pragma: no cover - depends on the optim version
    FusedWeight = fusable = None


class ThreadPerturbation:
    """Inside each module's forward, this thread sees ``w + sum_k c_k z_k(step)``.

    Args:
        directions: the run's directions.
        step: step number of the directions.
        terms: ``[(probe, coef), ...]``.
        params: ``{param_index: param}``; ``index``: ``{id(param): param_index}``.
        pool: ``{key: buffer}`` reused across steps by this thread.
        fused: use the optimizer's fused path for plain ``nn.Linear``/``nn.Embedding``.
    """

    def __init__(self, directions, step: int, terms, params: dict, index: dict, pool: dict, fused: bool):
        self.directions, self.step, self.terms = directions, step, list(terms)
        self.params, self.index, self.pool = params, index, pool
        self.fused = fused and FusedWeight is not None
        self.swapped: dict[int, torch.Tensor] = {}
        self.frames: list[tuple[list[int], object]] = []

    def perturbed(self, p: torch.Tensor, i: int, k: int) -> torch.Tensor:
        """``Directions.perturbed`` (same operations, same bits) into pool buffer ``k``."""
        key = (k, p.dtype, str(p.device))
        buf = self.pool.get(key)
        if buf is None or buf.numel() < p.numel():
            buf = self.pool[key] = torch.empty(p.numel(), dtype=p.dtype, device=p.device)
        out = buf[: p.numel()].view(p.shape)
        src, dst = p.reshape(-1), out.view(-1)
        first = True
        for probe, coef in self.terms:
            for start, stop, z in self.directions.chunks(p, self.step, probe, i):
                if first:
                    torch.add(src[start:stop], z, alpha=coef, out=dst[start:stop])
                else:
                    dst[start:stop].add_(z, alpha=coef)
            first = False
        if first:
            out.copy_(p)
        return out

    def pre(self, module) -> None:
        frame, mode = [], None
        for p in module._parameters.values():
            i = self.index.get(id(p)) if p is not None else None
            if i is None:
                continue
            if (mode is None and self.fused and i not in self.swapped
                    and fusable(module, p, self.directions)):
                mode = FusedWeight(self.directions, self.step, self.terms, i, p)
            elif i not in self.swapped:
                self.swapped[i] = p.data
                p.data = self.perturbed(p.data, i, len(self.swapped) - 1)
                frame.append(i)
        if mode is not None:
            mode.__enter__()
        self.frames.append((frame, mode))

    def post(self, output) -> None:
        if not self.frames:
            return
        frame, mode = self.frames.pop()
        if mode is not None:
            mode.__exit__(None, None, None)
        for i in frame:
            self.params[i].data = self.swapped.pop(i)
        if frame:  # a module that returned a view of its (perturbed) weight keeps that buffer
            outs = output if isinstance(output, (tuple, list)) else (output,)
            ptrs = {t.untyped_storage().data_ptr() for t in outs if isinstance(t, torch.Tensor)}
            for key in [k for k, b in self.pool.items() if b.untyped_storage().data_ptr() in ptrs]:
                del self.pool[key]

    def close(self) -> None:
        """Undo whatever an interrupted forward left swapped."""
        while self.frames:
            self.post(None)
        for i in list(self.swapped):
            self.params[i].data = self.swapped.pop(i)


class PerThread:
    """Global forward hooks dispatching to the calling thread's :class:`ThreadPerturbation`."""

    def __init__(self):
        self.local = threading.local()
        self._handles: list = []

    def set(self, pert: ThreadPerturbation | None) -> None:
        self.local.pert = pert

    def _pre(self, module, args):
        pert = getattr(self.local, "pert", None)
        if pert is not None:
            pert.pre(module)

    def _post(self, module, args, output):
        pert = getattr(self.local, "pert", None)
        if pert is not None:
            pert.post(output)

    def __enter__(self) -> PerThread:
        self._handles = [nn_module.register_module_forward_pre_hook(self._pre),
                         nn_module.register_module_forward_hook(self._post, always_call=True)]
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles = []
        return False
