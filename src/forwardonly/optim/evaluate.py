"""How a ZO optimizer evaluates the loss at perturbed points: the one overridable piece of a step.

An *evaluator* turns ``points`` (each a list of ``(probe, coef)`` terms: the point
``w + sum coef z_probe``) into losses. :class:`Evaluator` runs one perturbed forward per point, or,
for an optimizer made with ``paired=True``, all of a call's points in one forward over the batch
stacked once per point (:mod:`forwardonly.optim.perturb.batched`). Block streaming supplies its own
(:class:`forwardonly.offload.zo.DualEvaluator`: two points as two threads through one residency of
each block); distributed runs wrap none of this, they reduce the losses (see
:meth:`ZOOptimizer._reduce`).

:func:`call_closure` is the one place where a closure is called over the micro-batches of a step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch

from .perturb import Perturbation, Unpairable, slicing


def check_closure(closure, accum_steps: int, owner: str) -> None:
    """Reject a missing closure, and one that cannot take the micro-batch index when it must."""
    if closure is None:
        raise ValueError(f"{owner}.step() needs a closure that runs the forward pass and returns the loss "
                         f"(opt.step(lambda: loss_fn(model(x), y))); a transformers Trainer calls step() "
                         f"without one: use forwardonly.hf.ZOTrainer")
    if accum_steps == 1:
        return
    try:
        n = len([p for p in inspect.signature(closure).parameters.values()
                 if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    except (TypeError, ValueError):
        return
    if n != 1:
        raise ValueError(f"with accum_steps={accum_steps} the closure must take the micro-batch index: closure(i)")


def call_closure(closure: Callable, accum_steps: int) -> list:
    """The closure's outputs over the micro-batches of a step: ``[closure()]`` or ``[closure(i) ...]``."""
    try:
        if accum_steps == 1:
            return [closure()]
        return [closure(i) for i in range(accum_steps)]
    except RuntimeError as e:  # a first-order habit: torch's own words point nowhere near the cause
        if not torch.is_grad_enabled() and "does not require grad" in str(e):
            raise ValueError("the closure of a zeroth-order step called backward(): it must run the "
                             "forward pass only and return the loss (drop loss.backward() and zero_grad() "
                             "from it)") from None
        raise


def as_loss(out) -> float:
    """A closure's output as a float: a number, a 0-d tensor, or a model output with a ``.loss``."""
    if hasattr(out, "loss") and not isinstance(out, torch.Tensor):
        out = out.loss
        if out is None:
            raise ValueError("the closure returned a model output without a loss: pass labels, or return "
                             "the loss tensor itself")
    return float(out)


def slice_losses(out, k: int) -> list[float]:
    """The ``k`` slices' losses a batched closure returned (a tensor of shape ``(k,)`` or a sequence)."""
    if isinstance(out, (tuple, list)):
        vals = [float(v) for v in out]
    elif isinstance(out, torch.Tensor):
        vals = out.detach().reshape(-1).tolist()
    else:
        vals = None
    if vals is None or len(vals) != k:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        what = "the two halves' losses" if k == 2 else f"the {k} slices' losses"
        raise ValueError(f"with paired=True the closure must return {what} (a tensor of shape ({k},)), got "
                         f"{shape}; see forwardonly.optim.pair_losses")
    return vals


def with_source(opt, items, scales=None):
    """``items`` and ``scales`` extended by the parameters a tentative update changes (``opt.source``,
    ``lr: auto``) that the evaluation does not perturb, and the :class:`Perturbation` keywords for it."""
    src = getattr(opt, "source", None)
    if src is None:
        return items, scales, {}
    have = {i for i, _ in items}
    bare = [(i, p) for i, p in src.items() if i not in have]
    if scales is not None and bare:
        scales = [*scales, *[1.0] * len(bare)]
    return [*items, *bare], scales, {"source": src, "bare": {i for i, _ in bare}}


class Evaluator:
    """One perturbed forward per point, or one stacked forward for all points when ``opt.paired``."""

    def losses(self, opt, closure: Callable, step: int, points: Sequence, scales=None) -> list[float]:
        if opt.paired and len(points) > 1:
            return self.batched(opt, closure, step, points, scales)
        out, rows = [], getattr(opt, "_rows", None)
        for terms in points:
            opt._last_rows = None
            out.append(self.point(opt, closure, step, terms, scales))
            if rows is not None:  # the examples' losses at each point, for lr: auto's noise estimate
                rows.append(opt._last_rows)
        return out

    def point(self, opt, closure: Callable, step: int, terms, scales=None) -> float:
        """The loss at ``w + sum_k coef_k z_k(step)`` (times per-parameter ``scales``); ``w`` is untouched
        (deferred updates of the previous step are written on the way)."""
        if opt.paired:  # a paired closure asked for one point: its batch stacked once
            with slicing(1):
                return self._point(opt, closure, step, terms, scales)
        return self._point(opt, closure, step, terms, scales)

    def _point(self, opt, closure: Callable, step: int, terms, scales=None) -> float:
        if not terms and getattr(opt, "source", None) is None:
            opt._settle_deferred()
            return opt._call(closure)
        items, scales, src = with_source(opt, opt.perturbed_items(), scales)
        first = opt._unowned is None
        with Perturbation(items, opt.directions, step, terms, scales, whole=opt._unowned or (),
                          fused=opt.directions.blockwise, pending=opt.pending, **src) as pert:
            loss = opt._call(closure)
        if first:
            opt._unowned = {i for i, _ in items} - pert.touched
            if opt._unowned:  # some parameters live outside any module: evaluate again with them swapped
                with Perturbation(items, opt.directions, step, terms, scales, whole=opt._unowned,
                                  fused=opt.directions.blockwise, pending=opt.pending, **src):
                    loss = opt._call(closure)
        return loss

    def batched(self, opt, closure: Callable, step: int, points: Sequence, scales=None) -> list[float]:
        """The losses at every point from one closure call over the batch stacked ``len(points)`` times."""
        items, scales, src = with_source(opt, opt.perturbed_items(), scales)
        with slicing(len(points)), Perturbation(items, opt.directions, step, points[0], scales,
                                                fused=opt.directions.blockwise, pending=opt.pending,
                                                slices=points, **src) as pert:
            losses = opt._call_sliced(closure, len(points))
        unowned = {i for i, _ in items} - pert.touched
        if unowned:
            raise Unpairable(f"paired evaluation: parameters {sorted(unowned)} were not used by any module's "
                             f"forward, so they cannot see a value per slice in one forward; use paired=False")
        return losses
