"""Sparse ZO-SGD: each step perturbs (and updates) a random fraction of every tensor's entries."""

from __future__ import annotations

from dataclasses import dataclass

from .perturb.masks import MASK_LEVELS, MASK_PROBE, RandomMask, mask, mask_chunk
from .zosgd import ZOSGD, ZOSGDConfig

__all__ = ["MASK_LEVELS", "MASK_PROBE", "ZOSGDSparse", "ZOSGDSparseConfig", "mask", "mask_chunk"]


@dataclass
class ZOSGDSparseConfig(ZOSGDConfig):
    """Sparse ZO-SGD's options: ZO-SGD's, plus ``density``, the fraction of entries perturbed per step."""

    density: float = 0.2


class ZOSGDSparse(ZOSGD):
    """ZO-SGD with sparse perturbations (ZO-Bench sec. 5; Sparse MeZO, Liu et al. 2024).

    Each step draws, for every trainable tensor, a random mask keeping a fraction
    ``density`` of its entries, perturbs only those entries (``w +- eps * (z * m)``)
    and updates only them (``w -= lr * g * (z * m)``): the estimate lives in a
    ``density * d``-dimensional subspace, which lowers its variance. The mask is a pure
    function of ``(seed, step, parameter index)``, drawn from its own generator seeds
    (never the global RNG) and regenerated wherever it is needed, never stored
    (:class:`~forwardonly.optim.perturb.RandomMask`). The masked directions are *not*
    rescaled by ``1/density``: ``lr`` is the step size on the entries that move. Masks are
    random, not magnitude-based.

    Args:
        params, lr, momentum, sign, conservative, weight_decay, **zo: as :class:`ZOSGD`.
            Weight decay acts on every entry (it needs no direction).
        density: fraction of entries perturbed per step, in ``(0, 1]`` (default 0.2);
            ``density=1`` gives ZO-SGD's directions exactly.

    Cost: one extra uniform draw per entry per direction generation (cached per chunk within a pass).

    Example::

        opt = ZOSGDSparse(model.parameters(), lr=1e-6, eps=1e-3, density=0.2)
        loss = opt.step(lambda: loss_fn(model(x), y))
    """

    _state_keys = ("density",)

    def __init__(self, params, lr: float | str = 1e-6, density: float = 0.2, **kw):
        super().__init__(params, lr=lr, mask=RandomMask(density), **kw)
        self.density = self.directions.mask.density
        self.zo_state["density"] = self.density
