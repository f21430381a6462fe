"""``federated``: the section of a training config that makes it a federated ZO run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class FederatedConfig:
    """Federated zeroth-order training (``forwardonly federated``; :mod:`forwardonly.federated`).

    The run's ``steps`` are each client's local steps over the whole run, ``steps / local_steps``
    rounds; every client's forwards add up, so a run spends ``clients * steps * forwards-per-step``.

    Args:
        clients: number of clients (default 8).
        local_steps: ZO steps a client takes per round from the round's global weights (default 4).
        alpha: Dirichlet concentration of the label skew (default 0.5); ``none`` splits IID.
        split_seed: seed of the split (default: the run's ``seed``).
        aggregate: ``mean`` (FedAvg: every client's steps applied at ``lr / clients``) or ``sum``
            (at ``lr``).
        server_lr: a factor on the learning rate the server replays the steps with (default 1).
        engine: ``local`` (clients one after another in this process) or ``flower`` (Flower's simulation
            engine, the ``federated`` extra); the same arithmetic, so the same weights.
        flower_cpus: CPUs per simulated Flower client (Ray actor).
    """

    clients: int = 8
    local_steps: int = 4
    alpha: float | None = 0.5
    split_seed: int | None = None
    aggregate: Literal["mean", "sum"] = "mean"
    server_lr: float = 1.0
    engine: Literal["local", "flower"] = "local"
    flower_cpus: float = 1.0

    def __post_init__(self):
        if self.clients < 1:
            raise ValueError(f"clients={self.clients} must be at least 1")
        if self.local_steps < 1:
            raise ValueError(f"local_steps={self.local_steps} must be at least 1")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha={self.alpha} must be > 0 (or none for an IID split)")
        if not (self.server_lr > 0 and math.isfinite(self.server_lr)):
            raise ValueError(f"server_lr={self.server_lr} must be > 0")
        if not self.flower_cpus > 0:
            raise ValueError(f"flower_cpus={self.flower_cpus} must be > 0")
