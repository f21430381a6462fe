"""Non-IID client splits of a task's training examples: Dirichlet label skew (Hsu et al. 2019), seeded.

Each label's examples are dealt to the clients in proportions drawn from ``Dirichlet(alpha)``: a small
``alpha`` gives each client a few dominant labels, a large one approaches an even (IID) split. With
``alpha=None`` the split is IID: a seeded shuffle dealt round-robin. Every client's examples keep the
order they had in the task, so one client holds the whole training split exactly as a centralised run
sees it.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError


def example_label(example) -> object:
    """The label an example is skewed by: its ``target`` (label index) or, failing that, its ``label``."""
    if isinstance(example, dict):
        for key in ("target", "label"):
            if key in example:
                value = example[key]
                return tuple(value) if isinstance(value, list) else value
    return None


def dirichlet_split(labels: list, clients: int, alpha: float | None, seed: int) -> list[list[int]]:
    """Indices of ``labels`` per client (each list ascending); ``alpha=None`` splits IID.

    The proportions of every label come from ``numpy.random.default_rng(seed)``, so a split is a pure
    function of ``(labels, clients, alpha, seed)``.

    Example::

        from forwardonly.federated.split import dirichlet_split

        parts = dirichlet_split([0, 0, 1, 1], clients=2, alpha=None, seed=0)  # alpha=None: an IID split
        assert sorted(i for part in parts for i in part) == [0, 1, 2, 3]
    """
    if not isinstance(clients, int) or isinstance(clients, bool) or clients < 1:
        raise UserError(f"federated.clients={clients!r} must be a positive integer")
    if alpha is not None and not (alpha > 0 and math.isfinite(alpha)):
        raise UserError(f"federated.alpha={alpha!r} must be > 0 (or none for an IID split)")
    if len(labels) < clients:
        raise UserError(f"federated.clients={clients} is more than the {len(labels)} training examples")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(clients)]
    if alpha is None:
        for j, i in enumerate(rng.permutation(len(labels))):
            parts[j % clients].append(int(i))
        return [sorted(p) for p in parts]
    by_label: dict = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    for y in sorted(by_label, key=repr):  # a fixed order of labels, whatever their type
        idx = np.array(by_label[y])[rng.permutation(len(by_label[y]))]
        shares = rng.dirichlet([alpha] * clients)
        cuts = np.floor(np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for c, chunk in enumerate(np.split(idx, cuts)):
            parts[c].extend(int(i) for i in chunk)
    return [sorted(p) for p in parts]


def label_counts(labels: list, parts: list[list[int]]) -> list[dict]:
    """Per client, how many examples of each label it holds (for logs and records)."""
    return [{str(k): v for k, v in sorted(_count(labels[i] for i in p).items(), key=lambda kv: repr(kv[0]))}
            for p in parts]


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
