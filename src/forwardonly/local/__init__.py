"""Forward-only and local learning: Forward-Forward, Mono-Forward, CaFo, DFA, DRTP, tpSGD,
NoProp, forward gradient, and the backprop baseline on the same MLPs and conv nets.

``METHODS`` maps each ``algo`` name of :class:`LocalConfig` to its class; adding
a method means adding a row here (the generic tests iterate over it).

Example::

    from forwardonly.local import LocalConfig, build_model
    model = build_model(LocalConfig(algo="mf", hidden=[64]), n_in=64, n_classes=10)
"""

from __future__ import annotations

from .base import LocalModel
from .cafo import CaFo
from .config import ALGOS, NOPROP_VARIANTS, LocalConfig
from .feedback import DFA, DRTP
from .ff import ForwardForward
from .fgrad import ForwardGradient
from .noprop import NoProp
from .noprop_ct import NoPropCT, NoPropFM
from .supervised import Backprop, MonoForward
from .tpsgd import TargetProjection

METHODS: dict[str, type[LocalModel]] = {
    "ff": ForwardForward,
    "mf": MonoForward,
    "cafo": CaFo,
    "dfa": DFA,
    "drtp": DRTP,
    "fg": ForwardGradient,
    "bp": Backprop,
    "tpsgd": TargetProjection,
    "noprop": NoProp,
}
# noprop.variant -> its class (``algo=noprop`` is the row of METHODS; the variant picks the class)
NOPROP: dict[str, type[LocalModel]] = {"dt": NoProp, "ct": NoPropCT, "fm": NoPropFM}
CONV = {"ff", "mf", "bp", "cafo", "tpsgd", "noprop"}  # the methods that take conv blocks (cfg.conv)
assert set(METHODS) == set(ALGOS) and set(NOPROP) == set(NOPROP_VARIANTS)


def build_model(cfg: LocalConfig, n_in: int, n_classes: int, shape: tuple[int, int, int] | None = None) -> LocalModel:
    """The model of ``cfg.algo``, initialised from ``cfg.seed`` (global RNG only at build time).

    ``shape`` is (channels, height, width) of an input row, needed with ``cfg.conv``.
    """
    import torch

    if cfg.conv and cfg.algo not in CONV:
        raise ValueError(f"algo={cfg.algo} has no conv version (conv={cfg.conv}); conv nets: {sorted(CONV)}")
    if not cfg.hidden and cfg.algo in ("ff", "dfa", "drtp", "fg"):
        raise ValueError(f"algo={cfg.algo} needs at least one hidden layer (hidden=[])")
    torch.manual_seed(cfg.seed)
    cls = NOPROP[cfg.noprop.variant] if cfg.algo == "noprop" else METHODS[cfg.algo]
    return cls(n_in, n_classes, cfg, shape)


__all__ = ["CONV", "METHODS", "NOPROP", "LocalConfig", "LocalModel", "build_model"]
