"""Forward-only and local learning: Forward-Forward, Mono-Forward, CaFo, DFA, DRTP,
forward gradient, and the backprop baseline on the same MLPs.

``METHODS`` maps each ``algo`` name of :class:`LocalConfig` to its class; adding
a method means adding a row here (the generic tests iterate over it).

Example::

    from forwardonly.local import LocalConfig, build_model
    model = build_model(LocalConfig(algo="mf", hidden=[64]), n_in=64, n_classes=10)
"""

from __future__ import annotations

from .base import LocalModel
from .cafo import CaFo
from .config import ALGOS, LocalConfig
from .feedback import DFA, DRTP
from .ff import ForwardForward
from .fgrad import ForwardGradient
from .supervised import Backprop, MonoForward

METHODS: dict[str, type[LocalModel]] = {
    "ff": ForwardForward,
    "mf": MonoForward,
    "cafo": CaFo,
    "dfa": DFA,
    "drtp": DRTP,
    "fg": ForwardGradient,
    "bp": Backprop,
}
assert set(METHODS) == set(ALGOS)


def build_model(cfg: LocalConfig, n_in: int, n_classes: int) -> LocalModel:
    """The model of ``cfg.algo``, initialised from ``cfg.seed`` (global RNG only at build time)."""
    import torch

    torch.manual_seed(cfg.seed)
    return METHODS[cfg.algo](n_in, n_classes, cfg)


__all__ = ["METHODS", "LocalConfig", "LocalModel", "build_model"]
