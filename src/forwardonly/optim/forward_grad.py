"""Forward gradient: the directional derivative by forward-mode AD instead of finite differences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.autograd.forward_ad as fwAD

from .base import Capabilities
from .evaluate import call_closure, with_source
from .perturb import Perturbation
from .zosgd import ZOSGD, ZOSGDConfig


@dataclass
class ForwardGradConfig(ZOSGDConfig):
    """Forward gradients' options: ZO-SGD's (``eps`` and ``two_sided`` do not apply)."""

    lr: float | Literal["auto"] = 1e-4


class ForwardGrad(ZOSGD):
    """SGD on forward gradients ``(grad L . z) z`` (Baydin et al., "Gradients without
    Backpropagation", 2022), computed with forward-mode AD (``torch.func.jvp``'s
    machinery, :mod:`torch.autograd.forward_ad`): one forward pass per probe, exact
    directional derivatives, no activations kept for a backward pass.

    Parameters must belong to modules (the tangents are attached inside each
    module's forward, by the same hooks that perturb the ZO optimizers' weights:
    :class:`~forwardonly.optim.perturb.Perturbation` with ``dual=True``). Accepts the
    arguments of :class:`ZOSGD` (momentum, sign, weight_decay, q, direction, seed,
    accum_steps, clip); ``eps``, ``two_sided`` and ``conservative`` do not apply.

    Memory: like :class:`ZOSGD`, plus the tangents of one module at a time and
    the forward-mode tangent of each live activation (about 2x activations).

    Example::

        opt = ForwardGrad(model.parameters(), lr=1e-4)
        loss = opt.step(lambda: loss_fn(model(x), y))
    """

    capabilities = Capabilities(pairs=False)

    def __init__(self, params, lr: float | str = 1e-4, **kw):
        if kw.pop("conservative", False):
            raise ValueError("ForwardGrad has no conservative variant")
        super().__init__(params, lr=lr, **kw)

    def _jvp(self, closure, step: int, probe: int) -> tuple[float, float]:
        items, _, src = with_source(self, self.perturbed_items())
        losses, tangents = [], []
        with fwAD.dual_level(), Perturbation(items, self.directions, step, [(probe, 1.0)], dual=True,
                                             **src) as duals:
            for out in call_closure(closure, self.accum_steps):
                primal, tangent = fwAD.unpack_dual(out.loss if hasattr(out, "loss") and hasattr(out, "keys")
                                                   else out)
                losses.append(float(primal))
                tangents.append(float(tangent) if tangent is not None else 0.0)
        self.zo_state["forwards"] += len(losses)
        missing = {i for i, _ in items} - duals.touched
        if missing:
            names = sorted(missing)[:5]
            raise ValueError(f"ForwardGrad: parameters {names} are not used by any module's forward; "
                             "forward gradients need parameters owned by nn.Modules")
        return sum(losses) / len(losses), sum(tangents) / len(tangents)

    def _loss_is_exact(self) -> bool:
        return True  # the primal of the forward-mode pass

    def _estimate(self, closure, step: int, probes: list[int]):
        total, grads = 0.0, []
        for k in probes:
            loss, g = self._jvp(closure, step, k)
            total += loss
            grads.append(g)
        return total / len(probes), grads
