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
                 param: torch.Tensor, fold: tuple[int, Sequence[tuple[int, float]]] | None = None):
        super().__init__()
        self.directions, self.step, self.terms, self.index = directions, step, list(terms), index
        self.param = param
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

    def whole(self) -> torch.Tensor:
        self.settle()
        return self.directions.perturbed(self.param.detach(), self.step, self.terms, self.index)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        w = self.param.detach()
        out_f, in_f = w.shape
        if x.shape[-1] != in_f or x.dtype != w.dtype:  # let F.linear raise its own error
            return F.linear(x, self.whole(), bias)
        x2 = x.reshape(-1, in_f)
        y = torch.empty(x2.shape[0], out_f, dtype=x.dtype, device=x.device)
        rows = max(1, LINEAR_BLOCK // in_f)
        d = self.directions
        buf = d._range_scratch(min(rows, out_f) * in_f, w.dtype, w.device, slot="w")
        wflat = w.view(-1)
        if rows >= out_f and self.fold is None:  # one block (every SmolLM2 layer but the head)
            wb = buf[: out_f * in_f]
            d.perturb_range(wb, wflat, self.step, self.terms, self.index, w.numel(), 0)
            torch.mm(x2, wb.view(out_f, in_f).t(), out=y)
        else:
            try:
                for r0 in range(0, out_f, rows):
                    r1 = min(out_f, r0 + rows)
                    wb = buf[: (r1 - r0) * in_f]
                    self.settle(r1 * in_f)  # the deferred update of these rows, while they are in cache
                    d.perturb_range(wb, wflat[r0 * in_f : r1 * in_f], self.step, self.terms, self.index,
                                    w.numel(), r0 * in_f)
                    torch.mm(x2, wb.view(r1 - r0, in_f).t(), out=y[:, r0:r1])
            finally:
                self.settle()
        if bias is not None:
            y.add_(bias)
        return y.view(*x.shape[:-1], out_f)

    def embedding(self, func, args, kwargs) -> torch.Tensor:
        self.settle()
        ids = _arg(args, kwargs, 0, "input")
        w = self.param.detach()
        num, dim = w.shape
        flat = ids.reshape(-1)
        if (flat.numel() == 0 or ids.dtype not in (torch.int32, torch.int64)
                or int(flat.min()) < 0 or int(flat.max()) >= num):  # let F.embedding raise its own error
            return func(ids, self.whole(), *args[2:], **{k: v for k, v in kwargs.items() if k != "weight"})
        rows, inverse = torch.unique(flat, sorted=True, return_inverse=True)
        sub = w.index_select(0, rows)
        if not self.terms:
            return F.embedding(inverse.view(ids.shape), sub)
        flat_index = (rows.unsqueeze(1) * dim + torch.arange(dim, device=rows.device)).view(-1)
        out = torch.empty_like(sub)
        for j, (probe, coef) in enumerate(self.terms):
            z = self.directions.gather(w, self.step, probe, self.index, flat_index).view_as(sub)
            if j == 0:
                torch.add(sub, z, alpha=coef, out=out)
            else:
                out.add_(z, alpha=coef)
        # padding_idx, scale_grad_by_freq and sparse only matter for gradients, which are off here
        return F.embedding(inverse.view(ids.shape), out)
