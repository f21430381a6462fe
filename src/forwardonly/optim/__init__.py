"""Zeroth-order optimizers with the ``torch.optim`` API.

Every optimizer's ``step(closure)`` runs forward passes only. Each fast
optimizer has a plain reference twin (``*Reference``) that follows the paper
line by line and serves as the test oracle.
"""

from ._paired import Unpairable, pair_batch, pair_losses
from ._perturb import CHUNK, Directions, Perturbation, direction
from .base import ZOOptimizer
from .forward_grad import ForwardGrad
from .forward_grad_reference import ForwardGradReference
from .hybrid import ZOFOHybrid
from .hybrid_reference import ZOFOHybridReference
from .zoadam import ZOAdam
from .zoadam_reference import ZOAdamReference
from .zosgd import ZOSGD
from .zosgd_block import ZOSGDBlock
from .zosgd_block_reference import ZOSGDBlockReference
from .zosgd_reference import ZOSGDReference
from .zosgd_sparse import ZOSGDSparse
from .zosgd_sparse_reference import ZOSGDSparseReference

# name -> (fast class, reference class, fixed keyword arguments); one row per algorithm.
OPTIMIZERS = {
    "zo-sgd": (ZOSGD, ZOSGDReference, {}),
    "zo-sgd-mmt": (ZOSGD, ZOSGDReference, {"momentum": 0.9}),
    "zo-sgd-sign": (ZOSGD, ZOSGDReference, {"sign": True}),
    "zo-sgd-cons": (ZOSGD, ZOSGDReference, {"conservative": True}),
    "zo-adam": (ZOAdam, ZOAdamReference, {}),
    "forward-grad": (ForwardGrad, ForwardGradReference, {}),
    # ZO-Bench's enhancements (sec. 5): one block per step, sparse directions, first-order top blocks
    "zo-sgd-block": (ZOSGDBlock, ZOSGDBlockReference, {}),
    "zo-sgd-sparse": (ZOSGDSparse, ZOSGDSparseReference, {}),
    "zo-sgd-hybrid": (ZOFOHybrid, ZOFOHybridReference, {}),
}


def build_optimizer(name: str, params, **kwargs):
    """Make the optimizer registered as ``name`` (see :data:`OPTIMIZERS`)."""
    try:
        cls, _, fixed = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"Unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}") from None
    return cls(params, **{**fixed, **kwargs})


def takes_names(name: str) -> bool:
    """Whether optimizer ``name`` forms blocks from parameter names (pass ``(name, param)`` pairs)."""
    return getattr(OPTIMIZERS[name][0], "takes_names", False)


__all__ = [
    "CHUNK", "Directions", "Perturbation", "direction", "ZOOptimizer", "ZOSGD", "ZOAdam", "ForwardGrad",
    "ZOSGDReference", "ZOAdamReference", "ForwardGradReference", "OPTIMIZERS", "build_optimizer",
    "ZOSGDBlock", "ZOSGDBlockReference", "ZOSGDSparse", "ZOSGDSparseReference", "ZOFOHybrid",
    "ZOFOHybridReference", "takes_names", "Unpairable", "pair_batch", "pair_losses",
]
