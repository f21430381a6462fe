"""Perturbed ``F.linear`` and ``F.embedding`` that never materialise a perturbed weight.

:class:`~forwardonly.optim.perturb.Perturbation` hands most modules a whole
perturbed copy of their parameters. The two module types that hold nearly all of
a transformer's weights get a cheaper path, :class:`FusedWeight`, a
``TorchFunctionMode`` active only inside that module's forward:

* ``nn.Linear``: the output is computed in row blocks of about
  :data:`~forwardonly.optim.perturb.directions.BLOCK` elements. Each block of
  ``w + sum_k c_k z_k`` is built in one reused, cache-sized buffer and multiplied
  straight away, so the weights stream through memory once, as in a plain
  forward, and no weight-sized temporary is allocated (for SmolLM2 the tied
  49152 x 576 head would otherwise be a 113 MB temporary). A weight that fits one
  block (:func:`one_block`) skips the function mode: the module gets the perturbed
  matrix, built in the same shared buffer, as its weight for the duration of its
  forward.
* ``nn.Embedding``: ``(W + c Z)[ids] = W[ids] + c Z[ids]``: only the looked-up
  rows are perturbed; a Rademacher entry is one bit of its chunk's random words.

The perturbed weight values are bitwise those of
:meth:`~forwardonly.optim.perturb.Directions.perturbed`; only the matmul's
summation order can differ (blocked versus whole), within fp rounding. In a batched evaluation
(:mod:`.batched`) each slice of the rows is multiplied by its own perturbed block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .batched import Unpairable
from .directions import BLOCK, Directions

LINEAR_BLOCK = BLOCK
"""Weight elements per row block of the fused linear (whole rows; SmolLM2's layers fit in one block)."""


def fusable(module: torch.nn.Module, param: torch.Tensor, directions: Directions) -> bool:
    """Whether ``module``'s forward is exactly ``F.linear``/``F.embedding`` on ``param`` and may be fused.

    Anything unusual (a subclass, a hook or replaced forward on the module, autograd or
    autocast on, plain directions) keeps the whole-tensor path.
    """
    kind = type(module)
    if kind is torch.nn.Linear:
        ok = True
    elif kind is torch.nn.Embedding:
        ok = module.max_norm is None  # max_norm renormalises the weight in place
    else:
        return False
    return (ok and directions.blockwise and module._parameters.get("weight") is param and param.dim() == 2
            and not module._forward_pre_hooks and not module._forward_hooks and "forward" not in module.__dict__
            and not torch.is_grad_enabled() and param.is_contiguous()
            and not torch.is_autocast_enabled("cpu" if param.is_cpu else param.device.type))


def one_block(module: torch.nn.Module, param: torch.Tensor) -> bool:
    """Whether a fusable ``nn.Linear``'s whole weight fits one block of :data:`LINEAR_BLOCK` elements (every
    SmolLM2 layer but the head): :class:`~forwardonly.optim.perturb.Perturbation` then hands the module
    the perturbed weight built in a shared scratch matrix instead of entering a :class:`FusedWeight`."""
    return type(module) is torch.nn.Linear and LINEAR_BLOCK // param.shape[1] >= param.shape[0]


def _unpairable(msg: str):
    return Unpairable(f"paired evaluation: {msg}; with paired=True the closure must run the model on its batch "
                      f"stacked once per slice, torch.cat([x] * k)")


def _arg(args, kwargs, pos: int, name: str):
    return args[pos] if len(args) > pos else kwargs.get(name)


class FusedWeight(TorchFunctionMode):
    """Inside one module's forward, ``F.linear``/``F.embedding`` on ``param`` see ``param + sum_k c_k z_k``.

    Args:
        directions: the run's directions.
        step: step number of the directions.
        terms: ``[(probe, coef), ...]``, already scaled for this parameter.
        index: the parameter's index (keys its directions).
        param: the weight; it is only read (but see ``fold``).
        fold: ``(step, terms)``: a deferred update to write into the weight on the way.
        slices: batched evaluation: the terms of every slice (``slices[0]`` is ``terms``); ``state``
            is the evaluation's :class:`~forwardonly.optim.perturb.batched.SliceState`.
        base: the values to perturb instead of the weight's own (a tentative update's candidate); the
            weight is then only recognised, never read.
    """

    def __init__(self, directions: Directions, step: int, terms: Sequence[tuple[int, float]], index: int,
                 param: torch.Tensor, fold: tuple[int, Sequence[tuple[int, float]]] | None = None,
                 slices: Sequence[Sequence[tuple[int, float]]] | None = None, state=None,
                 base: torch.Tensor | None = None):
        super().__init__()
        self.directions, self.step, self.terms, self.index = directions, step, list(terms), index
        self.param = param
        self.values = param if base is None else base  # what the perturbation is added to
        self.slices = None if slices is None else [list(t) for t in slices]
        self.state = state
        self.others: dict = {}  # id(param) -> (param, per-slice values): the module's other parameters
        self.fold = fold
        self._folded_to = 0  # weight elements the fold has been applied to

    def settle(self, upto: int | None = None) -> None:
        """Apply the deferred update to the weight's elements ``[_folded_to, upto)`` (default: all)."""
        if self.fold is None:
            return
        w = self.param.detach().view(-1)
        n = w.numel()
        upto = n if upto is None else upto
        if upto > self._folded_to:
            pstep, terms = self.fold
            seg = w[self._folded_to : upto]
            self.directions.perturb_range(seg, seg, pstep, terms, self.index, n, self._folded_to)
            self._folded_to = upto
        if self._folded_to >= n:
            self.fold = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _arg(args, kwargs, 1, "weight") is self.param:
            if func is F.linear:
                return self.linear(_arg(args, kwargs, 0, "input"), _arg(args, kwargs, 2, "bias"))
            if func is F.embedding:
                return self.embedding(func, args, kwargs)
        return func(*args, **kwargs)

    def whole(self, terms=None) -> torch.Tensor:
        self.settle()
        return self.directions.perturbed(self.values.detach(), self.step, self.terms if terms is None else terms,
                                         self.index)

    def _slice_rows(self, n: int, what: str) -> int:
        return self.state.check(n, f"{what} {tuple(self.param.shape)}")

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        w = self.values
        out_f, in_f = w.shape
        sliced = self.slices is not None
        w = w.detach()
        if sliced and bias is not None and id(bias) in self.others:
            values = self.others[id(bias)][1]
            y = self.linear(x, None)
            h = y.shape[0] // len(values)
            for j, b in enumerate(values):
                y[j * h : (j + 1) * h].add_(b)
            return y
        if sliced:
            if x.dim() < 2:
                raise _unpairable(f"a linear layer {tuple(w.shape)} got an unbatched input of shape {tuple(x.shape)}")
            self._slice_rows(x.shape[0], "a linear layer")
        if x.shape[-1] != in_f or x.dtype != w.dtype:  # let F.linear raise its own error
            if sliced:
                h = x.shape[0] // len(self.slices)
                return torch.cat([F.linear(x[j * h : (j + 1) * h], self.whole(t), bias)
                                  for j, t in enumerate(self.slices)])
            return F.linear(x, self.whole(), bias)
        x2 = x.reshape(-1, in_f)
        y = torch.empty(x2.shape[0], out_f, dtype=x.dtype, device=x.device)
        self._blocks(w, x2, y)
        if bias is not None:
            y.add_(bias)
        return y.view(*x.shape[:-1], out_f)

    def _sides(self, x2, y, rows: int, in_f: int) -> list[tuple]:
        """(input rows, output rows, terms, block buffer) per slice of a batched forward, or the whole batch."""
        d, w = self.directions, self.values
        n = min(rows, w.shape[0]) * in_f
        if self.slices is None:
            return [(x2, y, self.terms, d.block_scratch(n, w.dtype, w.device))]
        h = x2.shape[0] // len(self.slices)
        return [(x2[j * h : (j + 1) * h], y[j * h : (j + 1) * h], t,
                 d.block_scratch(n, w.dtype, w.device, slot="w" if j == 0 else f"w{j}"))
                for j, t in enumerate(self.slices)]

    def _blocks(self, w, x2, y) -> None:
        """``y = x2 @ (w + perturbation).T`` in row blocks of the weight, each built once per side."""
        out_f, in_f = w.shape
        rows = max(1, LINEAR_BLOCK // in_f)
        d, wflat = self.directions, w.view(-1)
        sides = self._sides(x2, y, rows, in_f)
        if rows >= out_f and self.fold is None:  # one block (every SmolLM2 layer but the head)
            for xs, ys, terms, b in sides:
                wb = b[: out_f * in_f]
                d.perturb_range(wb, wflat, self.step, terms, self.index, w.numel(), 0)
                torch.mm(xs, wb.view(out_f, in_f).t(), out=ys)
            return
        try:
            for r0 in range(0, out_f, rows):
                r1 = min(out_f, r0 + rows)
                if self.fold is not None and self._folded_to == r0 * in_f and self.slices is None:
                    # the deferred update of these rows and their perturbation, in one pass
                    (xs, ys, terms, b), = sides
                    wb = b[: (r1 - r0) * in_f]
                    pstep, pterms = self.fold
                    d.fold_perturb_range(wb, wflat[r0 * in_f : r1 * in_f], pstep, pterms, self.step, terms,
                                         self.index, w.numel(), r0 * in_f)
                    self._folded_to = r1 * in_f
                    if self._folded_to >= w.numel():
                        self.fold = None
                    torch.mm(xs, wb.view(r1 - r0, in_f).t(), out=ys[:, r0:r1])
                    continue
                self.settle(r1 * in_f)  # the deferred update of these rows, while they are in cache
                for xs, ys, terms, b in sides:
                    wb = b[: (r1 - r0) * in_f]
                    d.perturb_range(wb, wflat[r0 * in_f : r1 * in_f], self.step, terms, self.index,
                                    w.numel(), r0 * in_f)
                    torch.mm(xs, wb.view(r1 - r0, in_f).t(), out=ys[:, r0:r1])
        finally:
            self.settle()

    def embedding(self, func, args, kwargs) -> torch.Tensor:
        self.settle()
        ids = _arg(args, kwargs, 0, "input")
        rest = args[1:] if len(args) > 1 else ()
        if self.slices is None:
            return self._embed(func, ids, rest, kwargs, self.terms)
        if ids.dim() < 1:
            raise _unpairable(f"an embedding {tuple(self.param.shape)} got a single id")
        rows = self.state.rows
        if ids.shape[0] == 1 and rows is not None and rows > 1:
            # ids shared by the whole batch (positions broadcast over it): each slice needs its own
            # vectors, so the lookup is made per row of the stacked batch
            ids = ids.expand(rows, *ids.shape[1:])
        h = self._slice_rows(ids.shape[0], "an embedding")
        return torch.cat([self._embed(func, ids[j * h : (j + 1) * h], rest, kwargs, t)
                          for j, t in enumerate(self.slices)])

    def _embed(self, func, ids, rest, kwargs, terms) -> torch.Tensor:
        w = self.values.detach()
        num, dim = w.shape
        flat = ids.reshape(-1)
        if (flat.numel() == 0 or ids.dtype not in (torch.int32, torch.int64)
                or int(flat.min()) < 0 or int(flat.max()) >= num):  # let F.embedding raise its own error
            return func(ids, self.whole(terms), *rest[1:], **{k: v for k, v in kwargs.items()
                                                              if k not in ("weight", "input")})
        rows, inverse = torch.unique(flat, sorted=True, return_inverse=True)
        sub = w.index_select(0, rows)
        if not terms:
            return F.embedding(inverse.view(ids.shape), sub)
        flat_index = (rows.unsqueeze(1) * dim + torch.arange(dim, device=rows.device)).view(-1)
        out = torch.empty_like(sub)
        for j, (probe, coef) in enumerate(terms):
            z = self.directions.gather(w, self.step, probe, self.index, flat_index).view_as(sub)
            if j == 0:
                torch.add(sub, z, alpha=coef, out=out)
            else:
                out.add_(z, alpha=coef)
        # padding_idx, scale_grad_by_freq and sparse only matter for gradients, which are off here
        return F.embedding(inverse.view(ids.shape), out)
