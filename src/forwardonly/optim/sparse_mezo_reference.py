"""Reference twin of :class:`~forwardonly.optim.SparseMeZO`: MeZO's ZO-SGD on whole magnitude-masked directions."""

from __future__ import annotations

import math

import torch

from .zosgd_reference import ZOSGDReference


class SparseMeZOReference(ZOSGDReference):
    """:class:`ZOSGDReference` whose direction ``z(step, probe, i)`` is multiplied by the whole mask
    ``|w_i| <= h_i``, taken from the weights at the start of the step (before the in-place perturbation);
    ``h_i`` is the ``density``-quantile of ``|w_i|`` (sorted, at the first step and every ``refresh``
    steps). Same arguments as :class:`~forwardonly.optim.SparseMeZO`."""

    def __init__(self, params, lr=1e-6, density=0.25, refresh=0, **kw):
        super().__init__(params, lr=lr, **kw)
        self.density, self.refresh = density, refresh
        self.h: dict[int, float] = {}
        self.masks: dict[int, torch.Tensor] = {}

    def z(self, p, step, probe, i):
        return super().z(p, step, probe, i) * self.masks[i].to(p.dtype)

    @torch.no_grad()
    def step(self, closure):
        t = self.state["zo"]["step"]
        if not self.h or (self.refresh and t % self.refresh == 0):
            for i, p, _ in self._params():
                mags = p.detach().abs().reshape(-1).float().sort().values
                self.h[i] = float(mags[max(1, math.ceil(self.density * mags.numel())) - 1])
        self.masks = {i: p.detach().abs() <= self.h[i] for i, p, _ in self._params()}
        return super().step(closure)
