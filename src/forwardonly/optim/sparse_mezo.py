"""Sparse-MeZO: ZO-SGD that perturbs and updates only each tensor's small-magnitude weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import _check
from .perturb.masks import MagnitudeMask, magnitude_threshold
from .zosgd import ZOSGD, ZOSGDConfig


@dataclass
class SparseMeZOConfig(ZOSGDConfig):
    """Sparse-MeZO's options: ZO-SGD's, plus the share of each tensor it trains.

    Args:
        density: the fraction of each tensor's entries perturbed and updated (the smallest
            magnitudes), in ``(0, 1]``; the paper's sparsity is ``1 - density``.
        refresh: recompute the thresholds from the current weights every ``refresh`` steps
            (0: once, from the weights at the first step).
    """

    density: float = 0.25
    refresh: int = 0


class SparseMeZO(ZOSGD):
    """Sparse-MeZO (Liu et al., "Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM
    Fine-Tuning", arXiv:2402.15751): ZO-SGD on the weights whose magnitude is at most a per-tensor
    threshold.

    For every trainable tensor ``w`` a threshold ``h`` (one scalar) is the ``density``-quantile of
    ``|w|``, computed at the first step (and again every ``refresh`` steps if asked). Each step perturbs
    and updates the masked direction ``z * m`` with ``m = [|w| <= h]``::

        g = (L(w + eps z*m) - L(w - eps z*m)) / (2 eps),     w <- w - lr g z*m

    The mask is never stored: it is evaluated from the weights, ``|w| <= h``, wherever a direction is
    generated (whole copies, the fused linear and embedding paths, the update, the reference path:
    :class:`~forwardonly.optim.perturb.masks.MagnitudeMask`), always on the weights *before* the step's
    update, so the perturbation and the update of a step use the same mask and the paths agree bit for
    bit. The thresholds are kept per step (also through a deferred update), in ``state["zo"]``, so a
    resumed run continues with them and a seed-log replay recomputes them from the same weights.

    Args:
        params, lr, momentum, sign, conservative, weight_decay, defer_update, **zo: as :class:`ZOSGD`.
            Weight decay acts on every entry.
        density: fraction of each tensor's entries trained, in ``(0, 1]`` (default 0.25, sparsity 75 %);
            ``density=1`` gives ZO-SGD's run exactly.
        refresh: steps between threshold recomputations (default 0: once, as the paper does).

    Cost: a comparison per entry per direction generation; computing a threshold (``kthvalue`` over the
    tensor) once, or every ``refresh`` steps. No memory beyond ZO-SGD's but one float per tensor.

    Example::

        opt = SparseMeZO(model.parameters(), lr=1e-6, eps=1e-3, density=0.25)
        loss = opt.step(lambda: loss_fn(model(x), y))
    """

    _state_keys = ("density", "refresh")

    def __init__(self, params, lr: float | str = 1e-6, density: float = 0.25, refresh: int = 0, **kw):
        _check(isinstance(refresh, int) and not isinstance(refresh, bool) and refresh >= 0,
               f"Invalid refresh (steps between threshold recomputations): {refresh}")
        _check(not (refresh and lr == "auto"), f"Invalid refresh={refresh} with lr='auto': a threshold "
                                                 f"recomputed from the weights would read them before the guard "
                                                 f"has verified the last update (use refresh=0)")
        super().__init__(params, lr=lr, mask=MagnitudeMask(density), **kw)
        self.density, self.refresh = self.directions.mask.density, refresh
        self.zo_state.update(density=self.density, refresh=refresh, thresholds={})
        self._bind_thresholds()

    def _bind_thresholds(self) -> None:
        # the mask's per-tensor history lives in zo_state: it follows state_dict and load_state_dict
        self.directions.mask._h = self.zo_state["thresholds"]

    def _due(self, step: int) -> bool:
        if not self.zo_state["thresholds"]:
            return True
        if self.refresh and step % self.refresh == 0:
            last = max(since for hist in self.zo_state["thresholds"].values() for since, _ in hist)
            return last < step
        return False

    @torch.no_grad()
    def _set_thresholds(self, step: int) -> None:
        """Thresholds for ``step`` on, from the weights as they are now (after any pending update)."""
        if not self._due(step):
            return
        self.flush()
        self.directions.mask.set_thresholds(step, {i: magnitude_threshold(p, self.density)
                                                   for i, p, _ in self.indexed_params()})

    @torch.no_grad()
    def step(self, closure=None):
        self._set_thresholds(self.zo_state["step"])
        return super().step(closure)

    def _apply(self, step: int, coeffs: list[float]) -> None:
        self._set_thresholds(step)  # a replay reaches the update without a step
        super()._apply(step, coeffs)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        saved = self.zo_state.get("thresholds") or {}
        self.zo_state["thresholds"] = {int(i): [(int(s), float(h)) for s, h in hist] for i, hist in saved.items()}
        self._bind_thresholds()
