"""ZO-SGD (MeZO) and its momentum, sign and conservative variants."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from .base import Capabilities, Deferral, ZOConfig, ZOOptimizer, _check
from .perturb import CHUNK
from .perturb.sums import accumulate

_LOW = (torch.bfloat16, torch.float16)


@torch.no_grad()
def add_rounded_once(directions, p: torch.Tensor, step: int, terms, param_index: int, decay: float = 1.0) -> None:
    """``p = round(decay * p + sum_k coef_k z_k)``: the whole update in fp32, rounded to ``p.dtype`` once.

    For bf16/fp16 weights. ``z_k`` are the directions in ``p.dtype`` (the values the
    perturbation used); the sum, the decay and the addition are fp32, so several
    probes and weight decay cost one rounding instead of one each, and the result
    does not depend on how a backend evaluates a low-precision ``add`` with ``alpha``.
    Works chunk by chunk: two fp32 chunk buffers, no parameter-sized temporary.
    """
    flat = p.view(-1)
    n = flat.numel()
    z = torch.empty(min(CHUNK, n), dtype=p.dtype, device=p.device)
    acc = torch.empty(min(CHUNK, n), dtype=torch.float32, device=p.device)
    for c, start in enumerate(range(0, n, CHUNK)):
        stop = min(start + CHUNK, n)
        a, zc = acc[: stop - start], z[: stop - start]
        a.copy_(flat[start:stop])
        if decay != 1.0:
            a.mul_(decay)
        for probe, coef in terms:
            directions.fill(zc, step, probe, param_index, c, flat[start:stop])
            a.add_(zc.float(), alpha=coef)
        flat[start:stop].copy_(a)


@dataclass
class ZOSGDConfig(ZOConfig):
    """ZO-SGD's options (see :class:`ZOSGD`).

    Args:
        lr: learning rate, or ``auto`` (:mod:`forwardonly.optim.autolr`).
        momentum: heavy-ball momentum (one parameter-sized buffer).
        sign: step along the sign of the estimate.
        conservative: keep the best of ``w``, ``w - lr g`` and ``w + lr g`` (2-3 extra forwards).
        weight_decay: L2 penalty.
        defer_update: write each update during the next step's first pass (plain ZO-SGD only).
    """

    lr: float | Literal["auto"] = 1e-6
    momentum: float = 0.0
    sign: bool = False
    conservative: bool = False
    weight_decay: float = 0.0
    defer_update: bool = False


class ZOSGD(ZOOptimizer):
    """Zeroth-order SGD: MeZO's two-sided estimate, applied in place.

    Implements MeZO (Malladi et al., "Fine-Tuning Language Models with Just
    Forward Passes", NeurIPS 2023) and the ZO-SGD variants of ZO-Bench (Zhang et
    al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM
    Fine-Tuning", ICML 2024): ``w -= lr * (sum_k g_k z_k / q + weight_decay * w)``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-6).
        momentum: heavy-ball momentum (ZO-SGD-MMT); needs one parameter-sized buffer (default 0).
        sign: step along the sign of the estimate (ZO-SGD-Sign) (default False).
        conservative: evaluate ``w - lr*g`` (and ``w + lr*g``) and keep whichever
            of the candidates and ``w`` has the lowest loss (ZO-SGD-Cons); 2-3 extra
            forwards per step (default False).
        weight_decay: L2 penalty (default 0).
        **zo: estimator options of :class:`~forwardonly.optim.base.ZOOptimizer`
            (eps, q, two_sided, direction, seed, accum_steps, clip, paired, impl).

    Mixed precision: for bf16/fp16 weights the plain update is computed in fp32
    (all probes and the weight decay) and rounded to the weight's dtype once
    (:func:`add_rounded_once`), and the momentum buffer is fp32. With ``lr=0``
    nothing is written, so the weights stay bitwise identical in every dtype.

    Memory (bytes per trainable parameter, beyond the weights): 0 for plain,
    sign and conservative; 4 for momentum (fp32 buffer for 16-bit weights). Temporaries are one
    module's parameters plus a 1M-element scratch buffer. With Rademacher directions a step also
    keeps its random bits, 1/8 byte per parameter (at most 64 MiB; 1/4 byte with
    ``defer_update``), so that the three passes of a step draw them once.

    Speed: the defaults are the fast path. On the CPU, fp32 Rademacher perturbations and updates run
    through a small C kernel (:mod:`forwardonly.optim.perturb.native`, compiled at first use) that
    reads the random bits directly and is split over torch's own intra-op (OpenMP) threads, so every
    part of a step uses the threads ``torch.set_num_threads`` gives it; without a compiler the torch
    path gives the same values, slower. Two options trade something else for time and stay off by
    default: ``defer_update`` (the parameters lag one update behind between steps) and ``paired``
    (twice the activations; slower on the CPU at small batches).

    Deferred update (``defer_update=True``, plain ZO-SGD only): ``step`` records its
    update instead of writing it, and the next perturbed pass applies it to each
    weight just before that weight is first used (inside the blockwise perturbed
    ``nn.Linear``, in the same cache-sized blocks), so the weights stream through
    memory once less per step, as in ZO2. The values are bitwise those of the
    immediate update. Until then the parameters lag one update behind:
    :meth:`flush` applies it now, and ``state_dict``/``load_state_dict``, a replay
    through :meth:`apply_grads` and the next step flush first. Read the weights
    (evaluation, saving the model) after :meth:`flush`.

    Example::

        opt = ZOSGD(model.parameters(), lr=1e-6, eps=1e-3, seed=0)
        def closure():
            return loss_fn(model(x), y)   # forward only
        loss = opt.step(closure)
    """

    capabilities = Capabilities(streams=True)

    def __init__(self, params, lr: float | str = 1e-6, momentum: float = 0.0, sign: bool = False,
                 conservative: bool = False, weight_decay: float = 0.0, defer_update: bool = False, **zo):
        _check(0.0 <= momentum < 1.0, f"Invalid momentum value: {momentum}")
        _check(not defer_update or (momentum == 0.0 and not sign and not conservative),
               f"Invalid defer_update={defer_update!r}: only plain ZO-SGD defers its update "
               f"(momentum={momentum}, sign={sign}, conservative={conservative})")
        _check(not (defer_update and lr == "auto"),
               "Invalid defer_update=True with lr='auto': the guard keeps each update tentative instead")
        _check(not (conservative and zo.get("paired")),
               f"Invalid paired={zo.get('paired')!r}: the conservative variant compares candidate points one at a time")
        defaults = dict(lr=lr, momentum=momentum, sign=bool(sign), weight_decay=weight_decay)
        super().__init__(params, defaults, **zo)
        self.conservative = bool(conservative)
        self.defer_update = bool(defer_update)
        if self.defer_update:
            self.deferral = Deferral(self, lambda index: True)

    def apply_grads(self, step: int, grads: list[float], closure: Callable | None = None, loss=None):
        if not self.conservative:
            return super().apply_grads(step, grads, closure=closure, loss=loss)
        if not self._in_step:
            self.flush()
        if closure is None:
            raise ValueError("the conservative variant needs the closure to compare candidate losses")
        # Candidates w - lr*g and w + lr*g, evaluated without touching w.
        coeffs = self._coefficients(step, grads)
        scales = [group["lr"] for _, _, group in self.update_items(step)]
        l0 = self.evaluate(closure, step, [])
        l1 = self.evaluate(closure, step, [(k, -c) for k, c in enumerate(coeffs)], scales)
        if l1 <= l0:
            choice = 1.0
        else:
            l2 = self.evaluate(closure, step, [(k, c) for k, c in enumerate(coeffs)], scales)
            choice = -1.0 if l2 < l0 else 0.0
        self.zo_state["cons_choice"] = choice
        if choice:
            self._apply(step, [choice * c for c in coeffs])

    def _persistence(self) -> float:
        return 1.0 / (1.0 - self.param_groups[0]["momentum"])

    def _fold_terms(self, p, group, coeffs):
        if group["momentum"] or group["sign"] or group["weight_decay"] or p.dtype in _LOW or not p.is_contiguous():
            return None
        return [(k, -group["lr"] * c) for k, c in enumerate(coeffs)]

    @torch.no_grad()
    def _update(self, index: int, p: torch.Tensor, group: dict, step: int, coeffs: list[float]) -> None:
        d = self.directions
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        flat = p.view(-1)
        if mu == 0.0 and not group["sign"]:
            if p.dtype in _LOW:  # mixed precision: fp32 arithmetic, one rounding
                add_rounded_once(d, p, step, [(k, -lr * c) for k, c in enumerate(coeffs) if c != 0.0], index,
                                 1.0 - lr * wd)
                return
            if wd:
                p.mul_(1.0 - lr * wd)
            d.add_(p, step, [(k, -lr * c) for k, c in enumerate(coeffs)], index)
            return
        if mu:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                # fp32 for bf16/fp16 weights: the buffer sums many small terms
                buf = state["momentum_buffer"] = torch.zeros_like(
                    p, dtype=torch.float32 if p.dtype in _LOW else p.dtype, memory_format=torch.contiguous_format)
            else:
                buf.mul_(mu)
            bflat = buf.view(-1)
            for start, stop, g in accumulate(d, p, step, list(enumerate(coeffs)), index):
                bflat[start:stop].add_(g)  # (low precision: g is in p.dtype, the sum in fp32)
            if wd:
                buf.add_(p, alpha=wd)
            p.add_(buf.sign() if group["sign"] else buf, alpha=-lr)
            return
        if wd:  # sign without momentum
            p.mul_(1.0 - lr * wd)
        for start, stop, g in accumulate(d, p, step, list(enumerate(coeffs)), index):
            flat[start:stop].add_(g.sign_(), alpha=-lr)
