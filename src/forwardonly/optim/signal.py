"""The batch's signal fraction for ``lr: auto``: how much of a batch's projected gradient is the training set's.

A closure whose loss carries its examples' losses (``loss.rows``, as forwardonly's objectives' losses do)
gives, at each evaluated point, one loss per example; an estimate turns them into per-example projected
gradients ``g_i`` with the same arithmetic as its ``g`` (:func:`pair_grads`, :func:`one_sided_grads`).
:func:`observe` folds a step's ``g_i`` into moving means of ``g^2`` and of its sampling noise
``var_i(g_i) / B``, and :func:`fraction` reads the signal fraction from them (see
:mod:`forwardonly.optim.autolr`, *Signal*).
"""

from __future__ import annotations

import math

import torch

RATE, FLOOR = 1.0 / 200, 1.0 / 64


def new_state() -> dict:
    return {"n": 0, "g2": 0.0, "var": 0.0, "k": 1}


def closure_rows(outs: list) -> torch.Tensor | None:
    """The examples' losses of one evaluation's closure outputs (its micro-batches' in order), or None."""
    rows = [getattr(o, "rows", None) for o in outs]
    if not all(isinstance(r, torch.Tensor) for r in rows):
        return None
    return torch.cat([r.reshape(-1).float() for r in rows])


def last(rows: list | None, n: int) -> list[torch.Tensor] | None:
    """The last ``n`` points' examples' losses, or None (a closure without them, a paired or distributed
    evaluation, or an estimate called outside a step)."""
    rows = rows[-n:] if rows is not None and len(rows) >= n else []
    if not rows or any(r is None for r in rows) or len({r.numel() for r in rows}) != 1:
        return None
    return rows


def pair_grads(rows: list | None, k: int, eps: float) -> list[torch.Tensor] | None:
    """Per-example ``(L+ - L-) / (2 eps)`` of ``k`` two-sided probes evaluated last (``+, -`` in turn)."""
    rows = last(rows, 2 * k)
    return None if rows is None else [(rows[2 * j] - rows[2 * j + 1]) / (2 * eps) for j in range(k)]


def one_sided_grads(rows: list | None, k: int, eps: float) -> list[torch.Tensor] | None:
    """Per-example ``(L_j - L_0) / eps`` of an estimate that measured ``L(w)`` and then ``k`` probes."""
    rows = last(rows, k + 1)
    return None if rows is None else [(r - rows[0]) / eps for r in rows[1:]]


def observe(ns: dict, grads: list[torch.Tensor] | None, examples: int | None) -> None:
    """Fold one step's per-example projected gradients (a tensor over the batch per probe) into ``ns``: moving
    means (weight 1/200 after a plain mean) of ``g^2`` and of ``var_i(g_i) / B``, the latter times ``1 - B / n``
    for a batch drawn without replacement from ``n = examples`` (when known)."""
    if not grads or grads[0].numel() < 2:
        return
    b = grads[0].numel()
    fpc = max(0.0, 1.0 - b / examples) if examples else 1.0
    g2 = sum(float(r.mean()) ** 2 for r in grads) / len(grads)
    var = sum(float(r.var()) for r in grads) / len(grads) / b * fpc
    if not (math.isfinite(g2) and math.isfinite(var)):
        return
    ns["n"] += 1
    r = max(1.0 / ns["n"], RATE)
    ns["g2"] += r * (g2 - ns["g2"])
    ns["var"] += r * (var - ns["var"])
    ns["k"] = len(grads)


def fraction(ns: dict) -> float:
    """``f = 1 - E[noise] / E[g^2]`` plus two standard errors (``2 sqrt(2 / m)`` for ``m`` effective squared
    gradients: a chi-square's spread), within [1/64, 1]; 1 before any observation."""
    if ns["n"] == 0 or not ns["g2"] > 0.0:
        return 1.0
    m = min(ns["n"], (2.0 - RATE) / RATE) * ns["k"]
    return min(1.0, max(FLOOR, 1.0 - ns["var"] / ns["g2"] + 2.0 * math.sqrt(2.0 / m)))
