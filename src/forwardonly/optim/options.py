"""What an optimizer class can do (:class:`Capabilities`) and the estimator options every ZO optimizer
shares (:class:`ZOConfig`, the base of each optimizer's typed config section).

Both are re-exported by :mod:`forwardonly.optim.base`, beside the step they describe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Capabilities:
    """What an optimizer class can do, for the training loop and the registry (no ``getattr`` probing).

    Args:
        takes_names: forms blocks from parameter names (pass ``(name, param)`` pairs).
        first_order: part of the model is trained by backpropagation (the loop must allow autograd).
        pairs: honours ``paired=True``.
        replay: a run can be rebuilt from its seed log.
        streams: can run over a streamed model (:class:`forwardonly.offload.StreamedZO`).
        auto_lr: takes ``lr="auto"`` (:mod:`forwardonly.optim.autolr`).
        distributes: can run over several processes (:func:`forwardonly.distributed.distribute`).
    """

    takes_names: bool = False
    first_order: bool = False
    pairs: bool = True
    replay: bool = True
    streams: bool = False
    auto_lr: bool = True
    distributes: bool = True


@dataclass
class ZOConfig:
    """Estimator options shared by every ZO optimizer (the typed section of ``optim`` in a config).

    Args:
        eps: perturbation scale.
        q: probes (directions) per step.
        two_sided: two-sided differences (else one-sided).
        direction: ``rademacher`` or ``gaussian`` entries.
        clip: clip projected gradients to ``[-clip, clip]`` (none by default).
        paired: evaluate a step's points in one forward over the batch stacked once per point.
        impl: ``auto`` (native kernel and fused layers where they apply), ``torch`` (fused layers, no
            native kernel) or ``plain`` (whole perturbed copies); the values are the same.
        auto_holdout: with ``lr: auto``, measure each calibration's line search on the next step's batch,
            which the update's estimate never saw, instead of on its own (:mod:`forwardonly.optim.autolr`).
    """

    eps: float = 1e-3
    q: int = 1
    two_sided: bool = True
    direction: Literal["rademacher", "gaussian"] = "rademacher"
    clip: float | None = None
    paired: bool = False
    impl: Literal["auto", "torch", "plain"] = "auto"
    auto_holdout: bool = False
