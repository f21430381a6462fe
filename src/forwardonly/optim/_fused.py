"""Perturbed ``F.linear`` and ``F.embedding`` that never materialise a perturbed weight.

:class:`~forwardonly.optim._perturb.Perturbation` hands most modules a whole
perturbed copy of their parameters. The two module types that hold nearly all of
a transformer's weights get a cheaper path, :class:`FusedWeight`, a
``TorchFunctionMode`` active only inside that module's forward:

* ``nn.Linear``: the output is computed in row blocks of about
  :data:`~forwardonly.optim._perturb.BLOCK` elements. Each block of
  ``w + sum_k c_k z_k`` is built in one reused, cache-sized buffer and multiplied
  straight away, so the weights stream through memory once, as in a plain
  forward, and no weight-sized temporary is allocated (for SmolLM2 the tied
  49152 x 576 head would otherwise be a 113 MB temporary).
* ``nn.Embedding``: ``(W + c Z)[ids] = W[ids] + c Z[ids]``: only the looked-up
  rows are perturbed; a Rademacher entry is one bit of its chunk's random words.

The perturbed weight values are bitwise those of
:meth:`~forwardonly.optim._perturb.Directions.perturbed`; only the matmul's
summation order can differ (blocked versus whole), within fp rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ._perturb import BLOCK, Directions

LINEAR_BLOCK = BLOCK
"""Weight elements per row block of the fused linear (whole rows; SmolLM2's layers fit in one block)."""


def fusable(module: torch.nn.Module, param: torch.Tensor, directions: Directions) -> bool:
    """Whether ``module``'s forward is exactly ``F.linear``/``F.embedding`` on ``param`` and may be fused.

    Anything unusual (a subclass, a hook or replaced forward on the module, autograd or
    autocast on, remapped directions) keeps the plain whole-tensor path.
    """
    kind = type(module)
    if kind is torch.nn.Linear:
        ok = True
    elif kind is torch.nn.Embedding:
        ok = module.max_norm is None  # max_norm renormalises the weight in place
    else:
        return False
    return (ok and module._parameters.get("weight") is param and param.dim() == 2 and param.is_contiguous()
            and not module._forward_pre_hooks and not module._forward_hooks and "forward" not in module.__dict__
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled(param.device.type)
            and directions.ranged)


def _unpairable(msg: str):
    from ._paired import Unpairable

    return Unpairable(f"paired evaluation: {msg}; with paired=True the closure must run the model on its batch "
                      f"twice, torch.cat([x, x])")


def _arg(args, kwargs, pos: int, name: str):
    return args[pos] if len(args) > pos else kwargs.get(name)


class FusedWeight(TorchFunctionMode):
    """Inside one module's forward, ``F.linear``/``F.embedding`` on ``param`` see ``param + sum_k c_k z_k``.

    Args:
        directions: the run's directions.
        step: step number of the directions.
        terms: ``[(probe, coef), ...]``, already scaled for this parameter.
        index: the parameter's index (keys its directions).
        param: the weight; it is only read.
    """

    def __init__(self, directions: Directions, step: int, terms: Sequence[tuple[int, float]], index: int,
                 param: torch.Tensor, fold: tuple[int, Sequence[tuple[int, float]]] | None = None,
                 pair_terms: Sequence[tuple[int, float]] | None = None, pair_state=None):
        super().__init__()
        self.directions, self.step, self.terms, self.index = directions, step, list(terms), index
        self.param = param
        # paired evaluation (see _paired.py): the second half of the batch sees ``pair_terms``
        self.pair_terms = None if pair_terms is None else list(pair_terms)
        self.pair_state = pair_state
        self.pairs: dict = {}  # id(param) -> (param, first half, second half): the module's other parameters
        self.fold = fold  # (step, terms): a deferred update to write into the weight on the way
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
        return self.directions.perturbed(self.param.detach(), self.step, self.terms if terms is None else terms,
                                         self.index)

    def _half(self, n: int, what: str) -> int:
        return self.pair_state.check(n, f"{what} {tuple(self.param.shape)}")

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        w = self.param
        out_f, in_f = w.shape
        paired = self.pair_terms is not None
        if (not paired and self.fold is None and LINEAR_BLOCK // in_f >= out_f and x.shape[-1] == in_f
                and x.dtype == w.dtype):
            # the common case in as few Python steps as it takes: the whole perturbed weight in one
            # cache-sized block, then one F.linear on it (no reshapes, no output allocation here)
            d = self.directions
            flat, mat = d._matrix_scratch(out_f, in_f, w.dtype, w.device)
            d.perturb_range(flat, w.detach().view(-1), self.step, self.terms, self.index, out_f * in_f, 0)
            return F.linear(x, mat, bias)
        w = w.detach()
        if paired and bias is not None and id(bias) in self.pairs:
            _, ba, bb = self.pairs[id(bias)]
            y = self.linear(x, None)
            h = y.shape[0] // 2
            y[:h].add_(ba)
            y[h:].add_(bb)
            return y
        if paired:
            if x.dim() < 2:
                raise _unpairable(f"a linear layer {tuple(w.shape)} got an unbatched input of shape {tuple(x.shape)}")
            self._half(x.shape[0], "a linear layer")
        if x.shape[-1] != in_f or x.dtype != w.dtype:  # let F.linear raise its own error
            if paired:
                h = x.shape[0] // 2
                return torch.cat([F.linear(x[:h], self.whole(), bias),
                                  F.linear(x[h:], self.whole(self.pair_terms), bias)])
            return F.linear(x, self.whole(), bias)
        x2 = x.reshape(-1, in_f)
        y = torch.empty(x2.shape[0], out_f, dtype=x.dtype, device=x.device)
        rows = max(1, LINEAR_BLOCK // in_f)
        d = self.directions
        buf = d._range_scratch(min(rows, out_f) * in_f, w.dtype, w.device, slot="w")
        # (input rows, output rows, terms) per half of a paired batch; the whole batch otherwise
        if paired:
            h = x2.shape[0] // 2
            buf2 = d._range_scratch(min(rows, out_f) * in_f, w.dtype, w.device, slot="w2")
            sides = [(x2[:h], y[:h], self.terms, buf), (x2[h:], y[h:], self.pair_terms, buf2)]
        else:
            sides = [(x2, y, self.terms, buf)]
        wflat = w.view(-1)
        if rows >= out_f and self.fold is None:  # one block (every SmolLM2 layer but the head)
            for xs, ys, terms, b in sides:
                wb = b[: out_f * in_f]
                d.perturb_range(wb, wflat, self.step, terms, self.index, w.numel(), 0)
                torch.mm(xs, wb.view(out_f, in_f).t(), out=ys)
        else:
            try:
                for r0 in range(0, out_f, rows):
                    r1 = min(out_f, r0 + rows)
                    if self.fold is not None and self._folded_to == r0 * in_f and not paired:
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
        if bias is not None:
            y.add_(bias)
        return y.view(*x.shape[:-1], out_f)

    def embedding(self, func, args, kwargs) -> torch.Tensor:
        self.settle()
        ids = _arg(args, kwargs, 0, "input")
        if self.pair_terms is not None:
            if ids.dim() < 1:
                raise _unpairable(f"an embedding {tuple(self.param.shape)} got a single id")
            rows = self.pair_state.rows
            if ids.shape[0] == 1 and rows is not None and rows > 1:
                # ids shared by the whole batch (positions broadcast over it): each half needs its own
                # vectors, so the lookup is made per row of the doubled batch
                ids = ids.expand(rows, *ids.shape[1:])
            h = self._half(ids.shape[0], "an embedding")
            rest = args[1:] if len(args) > 1 else ()
            return torch.cat([self._embed(func, ids[:h], rest, kwargs, self.terms),
                              self._embed(func, ids[h:], rest, kwargs, self.pair_terms)])
        return self._embed(func, ids, args[1:], kwargs, self.terms)

    def _embed(self, func, ids, rest, kwargs, terms) -> torch.Tensor:
        w = self.param.detach()
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
