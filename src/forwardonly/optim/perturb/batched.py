"""Batched evaluation: the perturbed forwards of a step as one forward over a stacked batch.

A two-sided step evaluates ``L(w + eps z)`` and ``L(w - eps z)``; a multi-probe step such as FZOO's
evaluates ``L(w)`` and ``L(w + eps z_k)`` for several ``k``. With ``paired=True`` the closure runs
the model once on its batch stacked ``K`` times along dim 0 (``torch.cat([x] * K)``, see
:func:`pair_batch`); slice ``j`` of every batch-carrying tensor sees the ``j``-th point, and the closure
returns the ``K`` slices' losses (:func:`pair_losses`). The weights stream through memory once per
forward instead of ``K`` times, each perturbed block is built ``K`` times while it is in cache, and the
Python and dispatch cost of the model's forward is paid once. The price is the activations of a
batch ``K`` times as large. :func:`current_slices` tells a closure how many slices are asked for.

Where the slices meet the perturbed parameters:

* plain ``nn.Linear``/``nn.Embedding`` (the fused path, :mod:`.fused`): each slice of the rows is
  multiplied by its own perturbed weight block;
* any other module that owns perturbed parameters (norms, quantized layers, custom modules):
  :class:`SlicedOps` is active during its forward. An op that reads a perturbed parameter is run once
  per slice with that slice's perturbed value, and the results are concatenated along dim 0. An op on
  parameters alone (``weight.float()``, ``1 + weight``) yields a *derived* value that later ops treat
  the same way.

Anything this cannot split correctly (a derived value leaving the module, an op whose result is not a
tensor split along dim 0, a batch whose size is not a multiple of ``K``) raises :class:`Unpairable`
naming the module and the op, instead of mixing the slices.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch.overrides import TorchFunctionMode


class Unpairable(ValueError):
    """A batched (paired) evaluation met something it cannot split into its slices."""


_LOCAL = threading.local()


def current_slices() -> int | None:
    """The number of slices the running batched evaluation asks for (``None`` outside one)."""
    return getattr(_LOCAL, "slices", None)


@contextlib.contextmanager
def slicing(k: int):
    """Within the block, :func:`current_slices` is ``k`` (set by the optimizer around a batched call)."""
    outer = current_slices()
    _LOCAL.slices = k
    try:
        yield
    finally:
        _LOCAL.slices = outer


class SliceState:
    """What the modes of one batched evaluation share: the slice count and the stacked batch's size."""

    def __init__(self, slices: int = 2):
        self.slices = slices
        self.rows: int | None = None

    def see_inputs(self, args) -> None:
        """Learn the stacked batch's size from the first module called with a positional tensor."""
        if self.rows is None:
            for v in _flatten(args, []):
                if isinstance(v, torch.Tensor) and v.dim() >= 1:
                    self.rows = v.shape[0]
                    return

    def check(self, n: int, where: str) -> int:
        """Validate a batch-carrying dim 0 of ``n`` rows; returns the size of one slice."""
        k = self.slices
        if n % k:
            what = "an odd number" if k == 2 else f"not a multiple of {k}"
            raise Unpairable(f"paired evaluation: {where} got {n} rows along dim 0, {what}; with paired=True the "
                             f"closure must run the model on its batch stacked {k} times, torch.cat([x] * {k})")
        if self.rows is None:
            self.rows = n
        return n // k


_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
                    "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__", "__setitem__"}


def _flatten(obj, out: list):
    if isinstance(obj, (list, tuple)):
        for v in obj:
            _flatten(v, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _flatten(v, out)
    else:
        out.append(obj)
    return out


def _map(obj, fn):
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(_map(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return fn(obj)


class SlicedOps(TorchFunctionMode):
    """Inside one module's forward, ops on its perturbed parameters run once per slice of the batch.

    Which tensors carry the batch is tracked: the module's positional inputs whose dim 0 is the stacked
    batch's (or a multiple of it: rows flattened batch-major), and everything computed from them inside
    the forward. Only where an op on a perturbed parameter meets no tracked tensor (the batch came in as
    a keyword argument) does a tensor whose dim 0 is exactly the stacked batch's count as one. An op that
    reads a perturbed parameter (or a value derived from parameters alone) runs once per slice: the
    batch tensors are cut into ``K`` parts along dim 0, the parameter takes that slice's value, and the
    results are concatenated. Tracking uses weak references, so nothing is kept alive by it.

    Args:
        module_name: for error messages.
        values: ``{id(param): (value of slice 0, ..., value of slice K-1)}``.
        state: the evaluation's :class:`SliceState`.
        inputs: the module's positional arguments.
        buffers: the module's buffers (never taken for batch values).
    """

    def __init__(self, module_name: str, values: dict, state: SliceState, inputs=(), buffers=()):
        super().__init__()
        from torch.utils.weak import WeakIdKeyDictionary

        self.buffers = {id(b) for b in buffers}
        self.name, self.state = module_name, state
        self.params = {k: tuple(v) for k, v in values.items()}  # id(param) -> the slices' values
        self.derived = WeakIdKeyDictionary()  # value of slice 0 -> values of slices 1..K-1
        self.batch = WeakIdKeyDictionary()  # tensors that carry the batch
        rows = state.rows
        for v in _flatten(inputs, []):
            # dim 0 the stacked batch's, or a multiple of it (rows flattened batch-major: (K*B*T, D))
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and rows and v.shape[0] % rows == 0 and v.shape[0]:
                self.batch[v] = True

    def _values_of(self, v):
        if not isinstance(v, torch.Tensor):
            return None
        hit = self.params.get(id(v))
        if hit is not None:
            return hit
        rest = self.derived.get(v)
        return None if rest is None else (v, *rest)

    def _carrying(self, flat, perturbed) -> list:
        carrying = [v for v in flat if not perturbed or self._values_of(v) is None]
        if perturbed and not any(v in self.batch for v in carrying):
            # batch values that reached the forward some other way (keyword arguments, attributes): a
            # tensor whose dim 0 is exactly the stacked batch's (the module's own buffers excepted)
            rows = self.state.rows
            return [v for v in carrying if rows is not None and v.dim() >= 1 and v.shape[0] == rows
                    and id(v) not in self.buffers]
        return [v for v in carrying if v in self.batch]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [v for v in _flatten((args, kwargs), []) if isinstance(v, torch.Tensor)]
        perturbed = [v for v in flat if self._values_of(v) is not None]
        carrying = self._carrying(flat, perturbed)
        name = getattr(func, "__name__", repr(func))
        if not perturbed:
            out = func(*args, **kwargs)
            if carrying:
                for v in _flatten(out, []):
                    if isinstance(v, torch.Tensor):
                        self.batch[v] = True
            return out
        if name.endswith("_") and not name.startswith("__") or name in _INPLACE_DUNDERS or "out" in kwargs:
            raise Unpairable(f"paired evaluation: in {self.name}, {name} writes in place with a perturbed "
                             f"parameter as an operand, which cannot give each slice its own result; "
                             f"use paired=False")
        parts = {}
        for v in carrying:
            if v.dim() < 1:
                raise Unpairable(f"paired evaluation: in {self.name}, {name} mixes a perturbed parameter with a "
                                 f"batch value that has no batch dimension; use paired=False")
            parts[id(v)] = self.state.check(v.shape[0], f"{self.name}: {name}")
        results = []
        for j in range(self.state.slices):
            def pick(v, j=j):
                if isinstance(v, torch.Tensor):
                    vals = self._values_of(v)
                    if vals is not None:
                        return vals[j]
                    h = parts.get(id(v))
                    if h is not None:
                        return v[j * h : (j + 1) * h]
                return v
            results.append(func(*_map(args, pick), **_map(kwargs, pick)))
        return self._join(results, bool(carrying), name)

    def _join(self, results: list, carrying: bool, name: str):
        first = results[0]
        if not carrying:  # parameters only: a derived value
            if isinstance(first, torch.Tensor):
                self.derived[first] = tuple(results[1:])
                return first
            if all(r == first for r in results[1:]):  # shapes, sizes, dtypes: the same in every slice
                return first
            raise Unpairable(f"paired evaluation: in {self.name}, {name} on perturbed parameters alone "
                             f"returned {type(first).__name__} values that differ between the slices; "
                             f"use paired=False")
        flats = [_flatten(r, []) for r in results]
        if not all(isinstance(v, torch.Tensor) and v.dim() >= 1 for f in flats for v in f):
            raise Unpairable(f"paired evaluation: in {self.name}, {name} returned something that is not a "
                             f"batched tensor; use paired=False")
        its = [iter(f) for f in flats[1:]]
        out = _map(first, lambda v: torch.cat([v, *(next(it) for it in its)]))
        for v in _flatten(out, []):
            self.batch[v] = True
        return out

    def check_output(self, output) -> None:
        """Raise if a derived value leaves the module (the other slices' values would be lost)."""
        for v in _flatten(output, []):
            if isinstance(v, torch.Tensor) and self._values_of(v) is not None:
                raise Unpairable(f"paired evaluation: {self.name} returns a value computed from its perturbed "
                                 f"parameters alone, with no batch dimension to split; use paired=False")


def pair_batch(*tensors: torch.Tensor):
    """Each tensor stacked along dim 0 once per slice of the running batched evaluation (twice outside
    one): the input of a paired closure.

    Example::

        opt = ZOSGD(model.parameters(), lr=1e-6, paired=True)
        def closure():
            ids2, labels2 = pair_batch(ids, labels)
            per_example = loss_fn(model(ids2), labels2)   # one loss per row, no reduction
            return pair_losses(per_example)               # [L(w + eps z), L(w - eps z)]
    """
    k = current_slices() or 2
    out = tuple(torch.cat([t] * k) for t in tensors)
    return out[0] if len(out) == 1 else out


def pair_losses(per_row: torch.Tensor) -> torch.Tensor:
    """The mean of each slice of ``per_row`` (losses per row of a stacked batch): a tensor of shape (K,)."""
    k = current_slices() or 2
    if per_row.dim() < 1 or per_row.shape[0] % k:
        what = "an even dim 0" if k == 2 else f"dim 0 a multiple of {k}"
        raise ValueError(f"pair_losses needs per-row losses of a stacked batch ({what}), got shape "
                         f"{tuple(per_row.shape)}")
    return per_row.reshape(k, -1).float().mean(1)
