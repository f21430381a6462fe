"""The closure of a zeroth-order step: what it may return, and the mistakes explained in one line.

A ZO step calls its closure several times under ``torch.no_grad()`` and reads
one number (or, ``paired=True``, two) from each call. Two habits carried over
from first-order training break that, and would otherwise surface as bare torch
errors far from their cause:

* calling ``loss.backward()`` inside the closure (torch: "element 0 of tensors
  does not require grad"), explained as :class:`ClosureError`;
* returning a Hugging Face ``ModelOutput``: accepted when it carries a
  ``.loss`` (the model was given ``labels``), one line otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class ClosureError(ValueError):
    """The closure of a zeroth-order step did something a forward-only step cannot use."""


def _loss_of(out):
    if isinstance(out, (torch.Tensor, float, int, tuple, list)) or not hasattr(out, "loss"):
        return out
    if out.loss is None:  # a ModelOutput (or alike) of a model called without labels
        raise ClosureError(f"the closure returned a {type(out).__name__} without a loss; pass labels= to the "
                           f"model or return the loss itself")
    return out.loss


def forward_only(closure: Callable) -> Callable:
    """``closure`` with its output reduced to the loss and its ``backward()`` calls explained."""

    def call(*args):
        try:
            out = closure(*args)
        except RuntimeError as e:
            if not torch.is_grad_enabled() and "does not require grad" in str(e):
                raise ClosureError("the closure of a zeroth-order step called backward(): it must run the "
                                   "forward pass only and return the loss (drop loss.backward() and "
                                   "zero_grad() from it)") from None
            raise
        return _loss_of(out)

    return call
