"""Hybrid ZO/FO: backpropagation for the top blocks, ZO-SGD for everything below."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .base import Capabilities, _check
from ..blocks import block_groups
from .zosgd import ZOSGD, ZOSGDConfig

FO_OPTIMS = ("sgd", "adam")


@dataclass
class ZOFOHybridConfig(ZOSGDConfig):
    """The hybrid's options: ZO-SGD's (no ``conservative``), plus its first-order part's.

    Args:
        fo_blocks: trailing blocks trained first-order.
        fo_lr: their learning rate (default: ``lr``), scheduled like ``lr``.
        fo_optim: ``adam`` (AdamW) or ``sgd``.
        betas, adam_eps: AdamW's.
    """

    fo_blocks: int = 2
    fo_lr: float | None = None
    fo_optim: Literal["adam", "sgd"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8


class ZOFOHybrid(ZOSGD):
    """First-order updates for the last ``fo_blocks`` blocks, ZO-SGD for the rest (ZO-Bench's ZO/FO hybrid).

    Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM
    Fine-Tuning: A Benchmark" (ICML 2024), sec. 5. Blocks are formed as in
    :mod:`forwardonly.blocks` (pass ``model.named_parameters()``); the trailing
    ``fo_blocks`` of them form the first-order (FO) part - for a decoder
    ``[embeddings, layer 0..L-1, final norm, (untied head)]``, ``fo_blocks=2`` is the last
    layer and the final norm (and the head, when it is not tied to the embeddings, needs 3).

    One step:

    1. one forward at ``w`` with autograd on and every ZO parameter frozen
       (``requires_grad=False`` for that pass), then ``backward``: the graph starts at the
       first FO parameter, so only the FO part's activations are kept and the backward
       stops there;
    2. the ZO estimate of :class:`ZOSGD` for the ZO part (forwards under ``no_grad``,
       only the ZO parameters perturbed);
    3. ZO-SGD's update of the ZO part and SGD (``momentum``) or AdamW of the FO part.

    Forwards per step: two-sided ``2q + 1``; one-sided ``q + 1`` (the unperturbed forward
    of step 1 is the one-sided estimate's base point, so it costs nothing extra). All of
    them are counted in ``state["zo"]["forwards"]``, the backwards in ``["backwards"]``.
    A non-finite loss skips the whole step (both parts). A run cannot be replayed from a
    seed log (the FO part's updates are not a function of seeds).

    Args:
        params: named parameters (or groups / tensors, see :mod:`forwardonly.blocks`).
        lr: ZO learning rate (default 1e-6).
        fo_blocks: trailing blocks trained first-order (default 2); at least one block must
            stay ZO.
        fo_lr: FO learning rate (default: ``lr``), kept in the FO groups as ``"fo_lr"`` so that a
            schedule can scale it independently of ``lr`` (``lr=0`` with ``fo_lr>0`` trains the FO
            part alone, the ablation of the ZO part).
        fo_optim: ``"adam"`` (AdamW, default) or ``"sgd"``.
        betas, adam_eps: AdamW's (default (0.9, 0.999), 1e-8).
        momentum, weight_decay: used by both parts (the FO weight decay is decoupled for AdamW).
        **zo: as :class:`ZOSGD` (eps, q, two_sided, direction, seed, accum_steps, clip, sign);
            ``conservative`` is not supported.

    Example::

        opt = ZOFOHybrid(model.named_parameters(), lr=1e-6, fo_lr=1e-5, fo_blocks=2)
        loss = opt.step(lambda: loss_fn(model(x), y))   # the closure returns the loss tensor
    """

    capabilities = Capabilities(takes_names=True, first_order=True, pairs=False, replay=False, auto_lr=False)

    def __init__(self, params, lr: float | str = 1e-6, fo_blocks: int = 2, fo_lr: float | None = None,
                 fo_optim: str = "adam", betas=(0.9, 0.999), adam_eps: float = 1e-8, **kw):
        _check(not kw.get("conservative", False), "ZOFOHybrid has no conservative variant")
        _check(not isinstance(lr, str), f"Invalid lr={lr!r}: the hybrid's first-order part needs a number "
                                        f"(lr='auto' is for the zeroth-order optimizers)")
        _check(fo_optim in FO_OPTIMS, f"Invalid fo_optim: {fo_optim!r} (expected one of {FO_OPTIMS})")
        fo_lr = lr if fo_lr is None else fo_lr
        _check(fo_lr is not None and fo_lr >= 0.0, f"Invalid fo_lr (first-order learning rate): {fo_lr}")
        _check(0.0 <= betas[0] < 1.0, f"Invalid beta parameter at index 0: {betas[0]}")
        _check(0.0 <= betas[1] < 1.0, f"Invalid beta parameter at index 1: {betas[1]}")
        _check(adam_eps > 0.0, f"Invalid adam_eps value: {adam_eps}")
        groups = block_groups(params)
        _check(isinstance(fo_blocks, int) and 1 <= fo_blocks < len(groups),
               f"Invalid fo_blocks: {fo_blocks} (the parameters form {len(groups)} blocks; "
               f"between 1 and {len(groups) - 1} may be first-order)")
        for k, g in enumerate(groups):
            g["fo"] = k >= len(groups) - fo_blocks
            if g["fo"]:
                g.update(lr=fo_lr, fo_lr=fo_lr)
        super().__init__(groups, lr=lr, **kw)
        for g in self.param_groups:
            g.update(fo_optim=fo_optim, betas=tuple(betas), adam_eps=adam_eps)
        self.blocks = [g["block"] for g in self.param_groups]
        self.fo_blocks = [g["block"] for g in self.param_groups if g["fo"]]
        self.zo_state["backwards"] = 0

    # ------------------------------------------------------------------ parts
    def update_items(self, step: int):
        """The ZO part (what the estimator perturbs and ZO-SGD updates)."""
        return ((i, p, g) for i, p, g in self.indexed_params() if not g["fo"])

    def fo_params(self):
        return [(p, g) for g in self.param_groups if g["fo"] for p in g["params"] if p.requires_grad]

    # ------------------------------------------------------------------- step
    def _first_order(self, closure) -> float:
        """Loss at ``w``; FO gradients into ``p.grad`` by a backward through the FO part only."""
        zo = [p for _, p, _ in self.update_items(self.zo_state["step"])]
        for p in zo:
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                calls = [closure] if self.accum_steps == 1 else [lambda j=j: closure(j) for j in range(self.accum_steps)]
                total = 0.0
                for call in calls:
                    loss = call()
                    loss = loss.loss if hasattr(loss, "loss") and not isinstance(loss, torch.Tensor) else loss
                    if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
                        raise ValueError("ZOFOHybrid: the closure's loss does not depend on the first-order "
                                         "parameters (return the loss tensor, with autograd allowed)")
                    total += float(loss.detach())
                    if math.isfinite(total):
                        (loss / len(calls)).backward()
        finally:
            for p in zo:
                p.requires_grad_(True)
        self.zo_state["forwards"] += len(calls)
        self.zo_state["backwards"] += len(calls)
        if self.parallel is not None:  # data-parallel, reduce="losses": the ranks' common loss, or they diverge
            return self.parallel.reduce_sum(total, len(calls))
        return total / len(calls)

    def _estimate(self, closure, step: int, probes: list[int]):
        l0 = self._first_order(closure)
        if not math.isfinite(l0) or not all(p.grad is None or bool(torch.isfinite(p.grad).all())
                                            for p, _ in self.fo_params()):
            return float("nan"), [float("nan")] * len(probes)
        if self.two_sided:
            return super()._estimate(closure, step, probes)
        return l0, [(self.evaluate(closure, step, [(k, self.eps)]) - l0) / self.eps for k in probes]

    @torch.no_grad()
    def step(self, closure=None):
        fo = self.fo_params()
        for p, _ in fo:
            p.grad = None
        try:
            return super().step(closure)
        finally:
            for p, _ in fo:
                p.grad = None

    def apply_grads(self, step: int, grads: list[float], closure=None, loss=None):
        super().apply_grads(step, grads, closure=closure, loss=loss)
        self._fo_update()

    @torch.no_grad()
    def _fo_update(self) -> None:
        for p, group in self.fo_params():
            if p.grad is None or group["lr"] == 0.0:
                continue
            lr, wd, g, state = group["lr"], group["weight_decay"], p.grad, self.state[p]
            if group["fo_optim"] == "sgd":
                if wd:
                    g = g.add(p, alpha=wd)
                mu = group["momentum"]
                if mu:
                    buf = state.get("fo_momentum_buffer")
                    buf = state["fo_momentum_buffer"] = g.clone() if buf is None else buf.mul_(mu).add_(g)
                    g = buf
                p.add_(g, alpha=-lr)
                continue
            b1, b2 = group["betas"]
            if not state:
                state["fo_step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["fo_step"] += 1
            t = state["fo_step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            if wd:
                p.mul_(1 - lr * wd)
            denom = (v / (1 - b2 ** t)).sqrt_().add_(group["adam_eps"])
            p.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
