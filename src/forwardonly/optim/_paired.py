"""Paired evaluation: the two perturbed forwards of a probe as one forward over a doubled batch.

A two-sided step evaluates ``L(w + eps z)`` and ``L(w - eps z)``. With
``paired=True`` the closure runs the model once on its batch stacked twice along
dim 0 (``torch.cat([x, x])``); the first half of every batch-carrying tensor sees
``w + eps z``, the second half ``w - eps z``, and the closure returns the two
halves' losses. The weights stream through memory once per probe instead of
twice, each perturbed block is built twice while it is in cache, and the
Python and dispatch cost of the model's forward is paid once. The price is the
activations of a batch twice as large.

Where the two halves meet the perturbed parameters:

* plain ``nn.Linear``/``nn.Embedding`` (the fused path, :mod:`._fused`): each
  half of the rows is multiplied by its own perturbed weight block;
* any other module that owns perturbed parameters (norms, quantized layers,
  custom modules): :class:`PairedOps` is active during its forward. An op that
  reads a perturbed parameter is run twice, once per half with that half's
  perturbed value, and the results are concatenated along dim 0. An op on
  parameters alone (``weight.float()``, ``1 + weight``) yields a *derived pair*
  that later ops treat the same way.

Anything this cannot split correctly (a derived value leaving the module, an op
whose result is not a tensor split along dim 0, a batch of odd size) raises
:class:`Unpairable` naming the module and the op, instead of mixing the halves.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode


class Unpairable(ValueError):
    """A paired evaluation met something it cannot split into its two halves."""


class PairState:
    """What the modes of one paired evaluation share: the size of dim 0 of the doubled batch."""

    def __init__(self):
        self.rows: int | None = None

    def see_inputs(self, args) -> None:
        """Learn the doubled batch's size from the first module called with a positional tensor."""
        if self.rows is None:
            for v in _flatten(args, []):
                if isinstance(v, torch.Tensor) and v.dim() >= 1:
                    self.rows = v.shape[0]
                    return

    def check(self, n: int, where: str) -> int:
        """Validate a batch-carrying dim 0 of ``n`` rows; returns the size of one half."""
        if n % 2:
            raise Unpairable(f"paired evaluation: {where} got {n} rows along dim 0, an odd number; with "
                             f"paired=True the closure must run the model on its batch twice, torch.cat([x, x])")
        if self.rows is None:
            self.rows = n
        return n // 2


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


class PairedOps(TorchFunctionMode):
    """Inside one module's forward, ops on its perturbed parameters run once per half of the batch.

    Which tensors carry the batch is tracked: the module's positional inputs whose dim 0 is the doubled
    batch's (or a multiple of it: rows flattened batch-major), and everything computed from them inside
    the forward. Only where an op on a perturbed
    parameter meets no tracked tensor (the batch came in as a keyword argument) does a tensor whose
    dim 0 is exactly the doubled batch's count as one. An op that reads a
    perturbed parameter (or a value derived from parameters alone) runs once per half: the batch
    tensors are cut at half their dim 0, the parameter takes that half's value, and the two results
    are concatenated. Tracking uses weak references, so nothing is kept alive by it.

    Args:
        module_name: for error messages.
        pairs: ``{id(param): (param, value_first_half, value_second_half)}``.
        state: the evaluation's :class:`PairState`.
        inputs: the module's positional arguments.
    """

    def __init__(self, module_name: str, pairs: dict, state: PairState, inputs=(), buffers=()):
        super().__init__()
        self.buffers = {id(b) for b in buffers}
        from torch.utils.weak import WeakIdKeyDictionary

        self.name, self.state = module_name, state
        self.params = {k: (a, b) for k, (_, a, b) in pairs.items()}  # id(param) -> the halves' values
        self.derived = WeakIdKeyDictionary()  # value of the first half -> value of the second
        self.batch = WeakIdKeyDictionary()  # tensors that carry the batch
        rows = state.rows
        for v in _flatten(inputs, []):
            # dim 0 the doubled batch's, or a multiple of it (rows flattened batch-major: (2B*T, D))
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and rows and v.shape[0] % rows == 0 and v.shape[0]:
                self.batch[v] = True

    def _pair_of(self, v):
        if not isinstance(v, torch.Tensor):
            return None
        hit = self.params.get(id(v))
        if hit is not None:
            return hit
        b = self.derived.get(v)
        return None if b is None else (v, b)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [v for v in _flatten((args, kwargs), []) if isinstance(v, torch.Tensor)]
        paired = [v for v in flat if self._pair_of(v) is not None]
        carrying = [v for v in flat if not paired or self._pair_of(v) is None]
        if paired and not any(v in self.batch for v in carrying):
            # batch values that reached the forward some other way (keyword arguments, attributes): a
            # tensor whose dim 0 is exactly the doubled batch's (the module's own buffers excepted)
            rows = self.state.rows
            carrying = [v for v in carrying if rows is not None and v.dim() >= 1 and v.shape[0] == rows
                        and id(v) not in self.buffers]
        else:
            carrying = [v for v in carrying if v in self.batch]
        name = getattr(func, "__name__", repr(func))
        if not paired:
            out = func(*args, **kwargs)
            if carrying:
                for v in _flatten(out, []):
                    if isinstance(v, torch.Tensor):
                        self.batch[v] = True
            return out
        if name.endswith("_") and not name.startswith("__") or name in _INPLACE_DUNDERS or "out" in kwargs:
            raise Unpairable(f"paired evaluation: in {self.name}, {name} writes in place with a perturbed "
                             f"parameter as an operand, which cannot give each half its own result; "
                             f"use paired=False")
        halves = {}
        for v in carrying:
            if v.dim() < 1:
                raise Unpairable(f"paired evaluation: in {self.name}, {name} mixes a perturbed parameter with a "
                                 f"batch value that has no batch dimension; use paired=False")
            halves[id(v)] = self.state.check(v.shape[0], f"{self.name}: {name}")
        results = []
        for side in (0, 1):
            def pick(v, side=side):
                if isinstance(v, torch.Tensor):
                    pair = self._pair_of(v)
                    if pair is not None:
                        return pair[side]
                    h = halves.get(id(v))
                    if h is not None:
                        return v[:h] if side == 0 else v[h:]
                return v
            results.append(func(*_map(args, pick), **_map(kwargs, pick)))
        ra, rb = results
        if not carrying:  # parameters only: a derived pair
            if isinstance(ra, torch.Tensor):
                self.derived[ra] = rb
                return ra
            if ra == rb:  # shapes, sizes, dtypes: the same on both sides
                return ra
            raise Unpairable(f"paired evaluation: in {self.name}, {name} on perturbed parameters alone "
                             f"returned {type(ra).__name__} values that differ between the halves; use paired=False")
        fa, fb = _flatten(ra, []), _flatten(rb, [])
        if not all(isinstance(v, torch.Tensor) and v.dim() >= 1 for v in fa + fb):
            raise Unpairable(f"paired evaluation: in {self.name}, {name} returned something that is not a "
                             f"batched tensor; use paired=False")
        it = iter(fb)
        out = _map(ra, lambda v: torch.cat([v, next(it)]))
        for v in _flatten(out, []):
            self.batch[v] = True
        return out

    def check_output(self, output) -> None:
        """Raise if a derived pair leaves the module (its second half would be lost)."""
        for v in _flatten(output, []):
            if isinstance(v, torch.Tensor) and self._pair_of(v) is not None:
                raise Unpairable(f"paired evaluation: {self.name} returns a value computed from its perturbed "
                                 f"parameters alone, with no batch dimension to split; use paired=False")


def pair_batch(*tensors: torch.Tensor):
    """Each tensor stacked twice along dim 0 (``torch.cat([t, t])``): the input of a paired closure.

    Example::

        opt = ZOSGD(model.parameters(), lr=1e-6, paired=True)
        def closure():
            ids2, labels2 = pair_batch(ids, labels)
            per_example = loss_fn(model(ids2), labels2)   # one loss per row, no reduction
            return pair_losses(per_example)               # [L(w + eps z), L(w - eps z)]
    """
    out = tuple(torch.cat([t, t]) for t in tensors)
    return out[0] if len(out) == 1 else out


def pair_losses(per_row: torch.Tensor) -> torch.Tensor:
    """The mean of each half of ``per_row`` (losses per row of a doubled batch): a tensor of shape (2,)."""
    if per_row.dim() < 1 or per_row.shape[0] % 2:
        raise ValueError(f"pair_losses needs per-row losses of a doubled batch (an even dim 0), got shape "
                         f"{tuple(per_row.shape)}")
    return per_row.reshape(2, -1).float().mean(1)
