"""Perturbation inside the forward pass: one hook pair, one plan per module.

In-place perturb-and-restore (``w += eps*z; ...; w -= eps*z``) does not give the weights back bit for
bit: in bf16/fp16 the rounding error of every step piles up and runs collapse. A
:class:`Perturbation` never writes to a weight. While one is active in a thread, a process-wide
forward pre-hook hands each module whose parameters it perturbs a *plan* for that module's forward,
and the matching post-hook undoes it:

* **fused** (plain ``nn.Linear``/``nn.Embedding``, :mod:`.fused`): the weight is perturbed block by
  block inside the op, or only the looked-up rows, with the same values; a linear layer whose weight
  fits one block (every SmolLM2 layer but the head) gets the perturbed matrix, built in a shared
  scratch buffer, as its weight for the duration of its forward (``module._parameters`` is swapped
  and put back), which costs a few dictionary writes instead of a function mode around its ops;
* **sliced** (a batched evaluation, :mod:`.batched`): each slice of the stacked batch sees its own
  perturbed value;
* **whole**: the module gets a temporary ``w + sum_k c_k z_k`` (``param.data`` points at it for the
  duration of its forward; only one module's temporaries are alive at a time);
* **dual** (forward gradients): the parameter is a forward-mode dual tensor ``(w, z)``.

Parameters that no module owns (a bare tensor used in a closure) are swapped for the whole evaluation
instead. The hooks dispatch to the :class:`Perturbation` entered in the *calling thread*, so two
threads can run differently perturbed forwards of one model at once (the streamed dual forward).

Deferred updates (``ZOSGD(defer_update=True)``, block streaming) are settled here: before a parameter
is first read, its pending update is written (folded into the blockwise ``nn.Linear`` where it takes
that path); whatever the forward did not reach is settled on exit, exception or not.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import torch
from torch.nn.modules import module as nn_module

from .batched import SlicedOps, SliceState, Unpairable
from .directions import Directions
from .fused import FusedWeight, fusable, one_block

_LOCK = threading.Lock()
_LOCAL = threading.local()
_HANDLES: list = []
_ACTIVE = [0]  # Perturbations entered, over all threads
_NOTHING = ((), None, None, ())  # the frame of a module whose forward perturbs nothing


def _current() -> Perturbation | None:
    stack = getattr(_LOCAL, "stack", None)
    return stack[-1] if stack else None


def _pre(module, args):
    pert = _current()
    if pert is not None:
        pert._pre(module, args)


def _post(module, args, output):
    pert = _current()
    if pert is not None:
        pert._post(module, output)


def _install() -> None:
    with _LOCK:
        _ACTIVE[0] += 1
        if _ACTIVE[0] == 1:
            _HANDLES[:] = [nn_module.register_module_forward_pre_hook(_pre),
                           nn_module.register_module_forward_hook(_post, always_call=True)]


def _uninstall() -> None:
    with _LOCK:
        _ACTIVE[0] -= 1
        if _ACTIVE[0] == 0:
            for h in _HANDLES:
                h.remove()
            _HANDLES.clear()


class NoPending:
    """No deferred updates (the default)."""

    def __contains__(self, index: int) -> bool:
        return False

    def fold(self, index: int):
        return None

    def settle(self, index: int) -> None:
        pass

    def settle_all(self) -> None:
        pass


class Perturbation:
    """Context manager: forwards in this thread run at ``w + sum_k coef_k z_k`` without writing to ``w``.

    Args:
        params: ``[(param_index, param), ...]``: the perturbed parameters and the index that keys
            their directions.
        directions: the run's :class:`~forwardonly.optim.perturb.Directions`.
        step: step number of the directions.
        terms: ``[(probe, coef), ...]``.
        scales: optional per-parameter multiplier of every coefficient (a per-group learning rate or
            perturbation scale), aligned with ``params``.
        whole: parameters to swap for the whole evaluation (not owned by any module).
        fused: let plain ``nn.Linear``/``nn.Embedding`` modules perturb their weight blockwise inside
            the op instead of receiving a whole copy (the values are the same; default True).
        pending: deferred updates to settle before first use (an object with ``fold``, ``settle``,
            ``settle_all`` and ``in``; see :class:`~forwardonly.optim.base.ZOOptimizer`).
        slices: a batched evaluation: the terms of every slice of a stacked batch (``slices[0]`` is
            ``terms``; see :mod:`.batched`).
        dual: forward gradients: each parameter becomes a dual tensor whose tangent is the direction
            of ``terms``'s single probe (``coef`` is ignored).
        pool: ``{key: buffer}`` reused for whole perturbed copies (a thread that allocates its own
            would pay for fresh pages every step).
        source: a tentative update (``lr: auto``'s, :mod:`forwardonly.optim.autolr`): an object with
            ``indices`` and ``value(index, param)``, the value a parameter would have after it (a new
            tensor, computed when the parameter's module runs and dropped after); the perturbation is
            added to that value instead of the weight, which is never written.
        bare: indices in ``params`` that only take the source's value (no terms): parameters a tentative
            update changes that this evaluation does not perturb.

    After the context, :attr:`touched` holds the indices of the parameters that some module's
    forward used.

    Example::

        with Perturbation(list(enumerate(model.parameters())), Directions(0), step=0, terms=[(0, 1e-3)]):
            loss_plus = loss_fn(model(x), y)       # at w + 1e-3 z(0, 0); w is never written
    """

    def __init__(self, params: Sequence[tuple[int, torch.Tensor]], directions: Directions, step: int,
                 terms: Sequence[tuple[int, float]], scales: Sequence[float] | None = None,
                 whole: Iterable[int] = (), fused: bool = True, pending=None,
                 slices: Sequence[Sequence[tuple[int, float]]] | None = None, dual: bool = False,
                 pool: dict | None = None, source=None, bare: Iterable[int] = ()):
        self.params = {i: p for i, p in params}
        self.source, self.bare = source, set(bare)
        self._bases: dict[int, torch.Tensor] = {}  # source values of the parameters being used now
        self.index = {id(p): i for i, p in params}
        self.directions, self.step, self.terms = directions, step, list(terms)
        self.scales = dict(zip(self.params, scales)) if scales is not None else dict.fromkeys(self.params, 1.0)
        self.whole, self.fused, self.dual, self.pool = set(whole), fused, dual, pool
        self.pending = pending if pending is not None else NoPending()
        self.slices = None if slices is None else [list(t) for t in slices]
        self.state = SliceState(len(self.slices)) if self.slices is not None else None
        self.touched: set[int] = set()
        self._swapped: dict[int, torch.Tensor] = {}  # param index -> original data
        self._frames: list[tuple] = []
        self._entered = False

    # ------------------------------------------------------------------ values
    def _scaled(self, terms, i: int) -> list[tuple[int, float]]:
        if i in self.bare:
            return []
        s = self.scales[i]
        return [(k, c * s) for k, c in terms]

    def _base(self, i: int, p: torch.Tensor) -> torch.Tensor | None:
        """The source's value of parameter ``i`` (computed once while it is in use), or None."""
        if self.source is None or i not in self.source.indices:
            return None
        if i not in self._bases:
            self._bases[i] = self.source.value(i, p)
        return self._bases[i]

    def _values(self, i: int, p: torch.Tensor) -> torch.Tensor:
        base = self._base(i, p)
        return p.data if base is None else base

    def _copy(self, p: torch.Tensor, i: int, terms, k: int) -> torch.Tensor:
        """A perturbed copy of ``p`` (into pool buffer ``k`` when there is a pool)."""
        out = None
        if self.pool is not None:
            key = (k, p.dtype, str(p.device))
            buf = self.pool.get(key)
            if buf is None or buf.numel() < p.numel():
                buf = self.pool[key] = torch.empty(p.numel(), dtype=p.dtype, device=p.device)
            out = buf[: p.numel()].view(p.shape)
        return self.directions.perturbed(p, self.step, self._scaled(terms, i), i, out=out)

    def _swap_in(self, i: int) -> bool:
        if i in self._swapped:
            return False
        self.pending.settle(i)
        p = self.params[i]
        base = self._base(i, p)
        tmp = base if base is not None and i in self.bare else \
            self._copy(p.data if base is None else base, i, self.terms, len(self._swapped))
        self._swapped[i] = p.data
        p.data = tmp
        return True

    # ------------------------------------------------------------------ plans
    def _pre(self, module, args):
        if self.state is not None:
            self.state.see_inputs(args)
        if not module._parameters:  # most modules of a transformer (activations, attention, containers)
            self._frames.append(_NOTHING)
            return
        frame, mode, values, swaps = [], None, {}, []
        had = set(self._bases)
        for name, p in module._parameters.items():
            i = self.index.get(id(p)) if p is not None else None
            if i is None:
                continue
            self.touched.add(i)
            if self.dual:
                swaps.append((name, p, self._dual_value(p, i)))
            elif mode is None and self.fused and i not in self._swapped and fusable(module, p, self.directions):
                fold = self.pending.fold(i) if type(module) is torch.nn.Linear else None
                if fold is None:
                    self.pending.settle(i)
                terms, base = self._scaled(self.terms, i), self._base(i, p)
                if self.slices is None and base is None and one_block(module, p):
                    # the whole perturbed weight fits one cache-sized block: build it in the shared scratch
                    # and let the module's own F.linear read it (no function mode, no Python per op)
                    swaps.append((name, p, self.directions.perturbed_matrix(p, self.step, terms, i, fold)))
                    continue
                mode = FusedWeight(self.directions, self.step, terms, i, p, fold=fold, state=self.state, base=base,
                                   slices=None if self.slices is None else [self._scaled(t, i) for t in self.slices])
            elif self.slices is not None:
                self.pending.settle(i)
                values[id(p)] = (p, [self._copy(self._values(i, p), i, t, len(values) * len(self.slices) + j)
                                     for j, t in enumerate(self.slices)])
            elif self._swap_in(i):
                frame.append(i)
        if values and mode is not None:
            mode.others = values  # an nn.Linear's bias: one value per slice, added inside the fused linear
        elif values:
            idx = ", ".join(map(str, sorted(self.index[k] for k in values)))
            mode = SlicedOps(f"{type(module).__name__} (parameter {idx})", {k: v for k, (_, v) in values.items()},
                             self.state, args, module._buffers.values())
        for name, _, value in swaps:
            module._parameters[name] = value
        if mode is not None:
            mode.__enter__()
        made = set(self._bases) - had  # source values made for this module live as long as its forward
        self._frames.append((frame, mode, module, swaps, made) if mode is not None or frame or swaps or made
                            else _NOTHING)

    def _dual_value(self, p: torch.Tensor, i: int):
        import torch.autograd.forward_ad as fwad

        (probe, _), = self.terms
        w = self._values(i, p).detach()
        if i in self.bare:
            return fwad.make_dual(w, torch.zeros_like(w))
        return fwad.make_dual(w, self.directions.full(w, self.step, probe, i))

    def _post(self, module, output):
        if self._frames and self._frames[-1] is _NOTHING:
            self._frames.pop()
            return
        mode = self._frames[-1][1] if self._frames else None
        try:
            if mode is not None and hasattr(mode, "check_output"):
                mode.check_output(output)
        finally:
            self._pop_frame(output)

    def _pop_frame(self, output=None):
        frame, mode, module, swaps, made = self._frames.pop()
        if mode is not None:
            mode.__exit__(None, None, None)
            if hasattr(mode, "settle"):
                mode.settle()  # a fold the op never reached (the module did not call F.linear on it)
        for name, p, _ in swaps:
            module._parameters[name] = p
        for i in frame:
            self.params[i].data = self._swapped.pop(i)
        for i in made:
            self._bases.pop(i, None)
        if frame and self.pool is not None and output is not None:
            # a module that returned a view of its (perturbed) weight keeps that buffer
            outs = output if isinstance(output, (tuple, list)) else (output,)
            ptrs = {t.untyped_storage().data_ptr() for t in outs if isinstance(t, torch.Tensor)}
            for key in [k for k, b in self.pool.items() if b.untyped_storage().data_ptr() in ptrs]:
                del self.pool[key]

    # -------------------------------------------------------------- lifecycle
    def __enter__(self):
        if self.slices is not None and self.whole:
            raise Unpairable(f"paired evaluation: parameters {sorted(self.whole)} are not owned by any module, "
                             f"so they cannot see a value per slice in one forward; use paired=False")
        try:
            for i in sorted(self.whole):
                self._swap_in(i)
            _LOCAL.stack = [*getattr(_LOCAL, "stack", []), self]
            self._entered = True
            _install()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self._entered:
            _LOCAL.stack = [p for p in _LOCAL.stack if p is not self]
            self._entered = False
            _uninstall()
        while self._frames:  # only if a post-hook never ran
            self._pop_frame()
        for i in list(self._swapped):
            self.params[i].data = self._swapped.pop(i)
        self._bases.clear()
        self.pending.settle_all()  # parameters the forward never used (or an exception stopped it)
        self.directions.release()
        return False
