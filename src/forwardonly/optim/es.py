"""Antithetic evolution strategies with centered-rank fitness shaping, as a zeroth-order optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .base import Capabilities, _check
from .zosgd import ZOSGD


def centered_ranks(values: list[float]) -> list[float]:
    """Each value's rank among ``values`` mapped to ``[-0.5, 0.5]`` (lowest -0.5, highest 0.5); tied values
    share their average rank, so two equal losses get equal weights (a non-differentiable objective such as
    accuracy ties often, and a tie must not move the weights)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + j) / 2
        i = j + 1
    top = max(len(values) - 1, 1)
    return [r / top - 0.5 for r in ranks]


@dataclass
class ESConfig:
    """ES's options (see :class:`ES`); ``population`` and ``sigma`` are the engine's ``q`` and ``eps``.

    Args:
        lr: learning rate of the shaped step.
        population: antithetic pairs per step (``2 * population`` forward passes).
        sigma: perturbation scale (the standard deviation of a Gaussian population; the entry size of a
            Rademacher one).
        weight_decay: ``w <- (1 - lr * weight_decay) w`` before each step.
        direction: ``gaussian`` or ``rademacher`` entries.
        paired: evaluate a step's ``2 * population`` points in one forward over the batch stacked as often.
        impl: ``auto``, ``torch`` or ``plain`` (:class:`~forwardonly.optim.base.ZOConfig`).
    """

    lr: float = 1e-4
    population: int = 8
    sigma: float = 1e-3
    weight_decay: float = 0.0
    direction: Literal["rademacher", "gaussian"] = "gaussian"
    paired: bool = False
    impl: Literal["auto", "torch", "plain"] = "auto"


def _alias(value, engine_value, name: str, engine_name: str, default):
    if value is not None and engine_value is not None and value != engine_value:
        raise ValueError(f"Invalid {name}={value!r} with {engine_name}={engine_value!r}: they name the same "
                         f"option, give one")
    return value if value is not None else engine_value if engine_value is not None else default


class ES(ZOSGD):
    """Antithetic evolution strategies (Salimans et al., "Evolution Strategies as a Scalable Alternative to
    Reinforcement Learning", 2017; for LLM fine-tuning: Qiu et al., "Evolution Strategies at Scale", 2025)
    with centered-rank fitness shaping (Wierstra et al., "Natural Evolution Strategies", JMLR 2014).

    A population is ``N`` seeded directions ``z_k`` (probes of the engine, never stored), each evaluated on
    both sides. With ``l+_k = L(w + sigma z_k)``, ``l-_k = L(w - sigma z_k)`` and ``u(l)`` the centered rank of
    a loss among all ``2N`` (lowest -0.5, highest +0.5, ties averaged), a step is:

        w <- (1 - lr * weight_decay) w - lr / (2 N sigma) * sum_k (u(l+_k) - u(l-_k)) z_k

    Only the order of the losses counts, so the step is the same for any monotone transform of the loss
    and works on non-differentiable objectives (``task.objective: accuracy``), where an equal pair (a
    tie) moves nothing. Each step costs ``2N`` forward passes.

    The ``2N`` losses are per-probe scalars (``state["zo"]["last_scalars"]``: ``loss_plus``, ``loss_minus``):
    distributed ranks gather or average them like projected gradients (probe-parallel runs rank every
    probe's losses), the seed log keeps them and a replay ranks them again, bitwise.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-4). A coordinate moves about ``lr / (sigma sqrt(N))`` per step.
        population: antithetic pairs per step, at least 1 (default 8); ``q`` is the same option.
        sigma: perturbation scale, > 0 (default 1e-3); ``eps`` is the same option.
        weight_decay: decoupled weight decay (default 0).
        **zo: direction (default ``gaussian``), seed, accum_steps, paired, impl
            (:class:`~forwardonly.optim.base.ZOOptimizer`).

    Memory: as :class:`ZOSGD` (no buffer); ``paired=True`` stacks the batch ``2N`` times.

    Example::

        opt = ES(model.parameters(), lr=1e-4, population=8, sigma=1e-3, seed=0)
        loss = opt.step(lambda: 1 - accuracy(model(x), y))   # any loss, forward only
    """

    capabilities = Capabilities(auto_lr=False)

    def __init__(self, params, lr: float = 1e-4, population: int | None = None, sigma: float | None = None,
                 weight_decay: float = 0.0, q: int | None = None, eps: float | None = None,
                 two_sided: bool = True, direction: str = "gaussian", **zo):
        population = _alias(population, q, "population", "q", 8)
        sigma = _alias(sigma, eps, "sigma", "eps", 1e-3)
        _check(isinstance(population, int) and not isinstance(population, bool) and population >= 1,
               f"Invalid population: {population!r} (antithetic pairs per step, at least 1)")
        _check(isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0
               and math.isfinite(sigma), f"Invalid sigma: {sigma!r} (the perturbation scale, > 0)")
        _check(two_sided, f"Invalid two_sided={two_sided!r}: ES evaluates antithetic pairs (both sides)")
        super().__init__(params, lr=lr, weight_decay=weight_decay, q=population, eps=float(sigma),
                         two_sided=True, direction=direction, **zo)

    def _estimate(self, closure, step: int, probes: list[int]):
        eps = self.eps
        points = [pt for k in probes for pt in ([(k, eps)], [(k, -eps)])]
        losses = self.losses(closure, step, points, self._eps_scales())
        plus, minus = losses[0::2], losses[1::2]
        self._probe_scalars = {"loss_plus": plus, "loss_minus": minus}
        grads = [(a - b) / (2 * eps) for a, b in zip(plus, minus)]  # logged; the step uses the ranks
        return sum(losses) / len(losses), grads

    def _coefficients(self, step: int, grads: list[float]) -> list[float]:
        plus, minus = self._scalars["loss_plus"], self._scalars["loss_minus"]
        n = len(plus)
        u = centered_ranks([*plus, *minus])
        return [(u[k] - u[n + k]) / (2 * n * self.eps) for k in range(n)]
