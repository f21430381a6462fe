"""Block-wise ZO-SGD: each step perturbs and updates one block of parameters."""

from __future__ import annotations

import torch

from ..blocks import block_groups
from .base import Capabilities
from .zosgd import ZOSGD


class ZOSGDBlock(ZOSGD):
    """ZO-SGD on one block per step, cycling through the blocks (ZO-Bench's block-wise ZO).

    Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM
    Fine-Tuning: A Benchmark" (ICML 2024), sec. 5: the variance of a ZO estimate grows
    with the number of perturbed coordinates ``d``; perturbing one of ``B`` blocks per
    step estimates a ``d/B``-dimensional gradient instead. Step ``t`` perturbs and
    updates block ``t % B`` only (the other blocks, their momentum buffers and their
    weight decay are left exactly as they are), so every block is visited once every
    ``B`` steps. Forwards per step are those of :class:`ZOSGD` (2 two-sided, q=1).

    Blocks (:mod:`forwardonly.blocks`): pass ``model.named_parameters()`` (or
    ``(name, tensor)`` pairs) to get one block per transformer layer plus one per other
    module (embeddings, final norm, head); several parameter groups are one block each;
    plain tensors are one block each. ``self.blocks`` lists the block names in order.

    The direction of a parameter is that of :class:`ZOSGD` at the same step (keyed by
    the same parameter index), so with a single block this optimizer *is* ZO-SGD, bit
    for bit. Accepts every argument of :class:`ZOSGD`.

    Example::

        opt = ZOSGDBlock(model.named_parameters(), lr=1e-6, eps=1e-3)
        loss = opt.step(lambda: loss_fn(model(x), y))   # updates block 0, then 1, ...
    """

    capabilities = Capabilities(takes_names=True)

    def __init__(self, params, lr: float | str = 1e-6, **kw):
        groups = block_groups(params)
        super().__init__(groups, lr=lr, **kw)
        self.blocks = [g["block"] for g in self.param_groups]
        self._unowned_of: dict[int, set[int] | None] = {}

    def block_at(self, step: int) -> int:
        """The index (in :attr:`blocks`) of the block that ``step`` perturbs and updates."""
        return step % len(self.param_groups)

    def update_items(self, step: int):
        # also what a seed-log replay updates: the block follows from the step alone
        b, i = self.block_at(step), 0
        for k, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.requires_grad and k == b:
                    yield i, p, group
                i += 1

    @torch.no_grad()
    def step(self, closure=None):
        b = self.block_at(self.zo_state["step"])
        self._unowned = self._unowned_of.get(b)  # unowned parameters differ per block
        try:
            return super().step(closure)
        finally:
            self._unowned_of[b] = self._unowned
