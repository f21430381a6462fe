"""Reference twin of :class:`~forwardonly.optim.ZOFOHybrid`: autograd + ``torch.optim`` on the top blocks,
MeZO's in-place ZO-SGD below."""

from __future__ import annotations

import math

import torch

from ..blocks import block_groups
from .zosgd_reference import ZOSGDReference


class ZOFOHybridReference(ZOSGDReference):
    """Plain hybrid: ``loss.backward()`` with the ZO part frozen, ``torch.optim.AdamW``/``SGD`` on the
    FO part, :class:`ZOSGDReference` on the rest. Same arguments as :class:`~forwardonly.optim.ZOFOHybrid`."""

    def __init__(self, params, lr=1e-6, fo_blocks=2, fo_lr=None, fo_optim="adam", betas=(0.9, 0.999),
                 adam_eps=1e-8, **kw):
        groups = block_groups(params)
        self.fo_groups = groups[len(groups) - fo_blocks:]
        super().__init__(groups[: len(groups) - fo_blocks], lr=lr, **kw)
        fo_lr = lr if fo_lr is None else fo_lr
        fo = [p for g in self.fo_groups for p in g["params"]]
        wd = kw.get("weight_decay", 0.0)
        self.fo_opt = (torch.optim.AdamW(fo, lr=fo_lr, betas=betas, eps=adam_eps, weight_decay=wd)
                       if fo_optim == "adam" else
                       torch.optim.SGD(fo, lr=fo_lr, momentum=kw.get("momentum", 0.0), weight_decay=wd))

    @torch.no_grad()
    def step(self, closure):
        zo = [p for _, p, _ in self._params()]
        self.fo_opt.zero_grad(set_to_none=True)
        for p in zo:
            p.requires_grad_(False)
        with torch.enable_grad():
            loss = closure()
            l0 = float(loss.detach())
            if math.isfinite(l0):
                loss.backward()
        for p in zo:
            p.requires_grad_(True)
        zs = self.state["zo"]
        zs["forwards"] += 1
        if not math.isfinite(l0):
            zs["step"] += 1
            zs["skipped"] += 1
            return torch.tensor(float("nan"))
        if self.two_sided:
            out = super().step(closure)
        else:  # the one-sided base point is the forward above
            t, eps = zs["step"], self.eps
            grads = []
            for k in range(self.q):
                self._perturb(t, k, eps)
                grads.append((self._loss(closure) - l0) / eps)
                self._perturb(t, k, -eps)
            zs["step"] = t + 1
            self.update(t, grads, closure)
            out = torch.tensor(l0)
        if math.isfinite(float(out)):
            self.fo_opt.step()
        return out
