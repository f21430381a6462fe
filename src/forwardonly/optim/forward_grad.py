"""Forward gradient: the directional derivative by forward-mode AD instead of finite differences."""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from .zosgd import ZOSGD


class _DualParams:
    """Global module hooks: during a module's forward its trainable parameters are
    dual tensors ``(w, z)``; the module's own ``Parameter`` objects are put back after."""

    def __init__(self, items, directions, step: int, probe: int):
        self.index = {id(p): i for i, p in items}
        self.directions, self.step, self.probe = directions, step, probe
        self.touched: set[int] = set()
        self._frames: list[list] = []
        self._handles = []

    def _pre(self, module, args):
        frame = []
        for name, p in list(module._parameters.items()):
            i = self.index.get(id(p)) if p is not None else None
            if i is None:
                continue
            self.touched.add(i)
            tangent = self.directions.full(p, self.step, self.probe, i)
            module._parameters[name] = fwAD.make_dual(p.detach(), tangent)
            frame.append((module, name, p))
        self._frames.append(frame)

    def _post(self, module, args, output):
        for mod, name, p in self._frames.pop():
            mod._parameters[name] = p

    def __enter__(self):
        from torch.nn.modules import module as nn_module

        self._handles = [nn_module.register_module_forward_pre_hook(self._pre),
                         nn_module.register_module_forward_hook(self._post, always_call=True)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        while self._frames:
            self._post(None, None, None)
        return False


class ForwardGrad(ZOSGD):
    """SGD on forward gradients ``(grad L . z) z`` (Baydin et al., "Gradients without
    Backpropagation", 2022), computed with forward-mode AD (``torch.func.jvp``'s
    machinery, :mod:`torch.autograd.forward_ad`): one forward pass per probe, exact
    directional derivatives, no activations kept for a backward pass.

    Parameters must belong to modules (the tangents are attached inside each
    module's forward). Accepts the arguments of :class:`ZOSGD` (momentum, sign,
    weight_decay, q, direction, seed, accum_steps, clip); ``eps``, ``two_sided``
    and ``conservative`` do not apply.

    Memory: like :class:`ZOSGD`, plus the tangents of one module at a time and
    the forward-mode tangent of each live activation (about 2x activations).

    Example::

        opt = ForwardGrad(model.parameters(), lr=1e-4)
        loss = opt.step(lambda: loss_fn(model(x), y))
    """

    _pairs = False  # its own estimate

    def __init__(self, params, lr: float = 1e-4, **kw):
        if kw.pop("conservative", False):
            raise ValueError("ForwardGrad has no conservative variant")
        super().__init__(params, lr=lr, **kw)

    def _jvp(self, closure, step: int, probe: int) -> tuple[float, float]:
        items = [(i, p) for i, p, _ in self.indexed_params()]
        losses, tangents = [], []
        with fwAD.dual_level(), _DualParams(items, self.directions, step, probe) as duals:
            calls = [closure] if self.accum_steps == 1 else [lambda j=j: closure(j) for j in range(self.accum_steps)]
            for call in calls:
                out = call()
                primal, tangent = fwAD.unpack_dual(out)
                losses.append(float(primal))
                tangents.append(float(tangent) if tangent is not None else 0.0)
        self.zo_state["forwards"] += len(calls)
        missing = {i for i, _ in items} - duals.touched
        if missing:
            names = sorted(missing)[:5]
            raise ValueError(f"ForwardGrad: parameters {names} are not used by any module's forward; "
                             "forward gradients need parameters owned by nn.Modules")
        return sum(losses) / len(losses), sum(tangents) / len(tangents)

    def estimate(self, closure, step: int):
        total, grads = 0.0, []
        for k in range(self.q):
            loss, g = self._jvp(closure, step, k)
            total += loss
            grads.append(g)
        return total / self.q, grads
