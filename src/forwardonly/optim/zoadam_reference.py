"""Reference twin of :class:`~forwardonly.optim.ZOAdam`: textbook Adam(W) on the ZO estimate."""

from __future__ import annotations

import torch

from .reference import _ReferenceZO


class ZOAdamReference(_ReferenceZO):
    """Adam on ``g_hat``, full per-element buffers, MeZO-style in-place estimate.
    ``second_moment="scalar"`` replaces ``v`` by its mean over each tensor."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.999), adam_eps=1e-8, weight_decay=0.0,
                 second_moment="scalar", **zo):
        super().__init__(params, dict(lr=lr, betas=betas, adam_eps=adam_eps, weight_decay=weight_decay,
                                      second_moment=second_moment), **zo)

    def update(self, step, grads, closure):
        for i, p, group in self._params():
            if group["lr"] == 0.0:
                continue
            b1, b2 = group["betas"]
            g = self.grad_estimate(p, i, step, grads).float()
            st = self.state[p]
            st["n"] = st.get("n", 0) + 1
            st["m"] = b1 * st.get("m", torch.zeros_like(g)) + (1 - b1) * g
            sq = g * g if group["second_moment"] == "full" else (g * g).mean()
            st["v"] = b2 * st.get("v", torch.zeros_like(sq)) + (1 - b2) * sq
            m_hat = st["m"] / (1 - b1 ** st["n"])
            v_hat = st["v"] / (1 - b2 ** st["n"])
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.sub_((group["lr"] * m_hat / (v_hat.sqrt() + group["adam_eps"])).to(p.dtype))
