"""Zeroth-order optimizers with the ``torch.optim`` API.

Every optimizer's ``step(closure)`` runs forward passes only. Each fast
optimizer has a plain reference twin (``*Reference``) that follows the paper
line by line and serves as the test oracle.
"""

from ._perturb import CHUNK, Directions, Perturbation, direction
from .base import ZOOptimizer
from .forward_grad import ForwardGrad
from .forward_grad_reference import ForwardGradReference
from .zoadam_reference import ZOAdamReference
from .zosgd_reference import ZOSGDReference
from .zoadam import ZOAdam
from .zosgd import ZOSGD

# name -> (fast class, reference class, fixed keyword arguments); one row per algorithm.
OPTIMIZERS = {
    "zo-sgd": (ZOSGD, ZOSGDReference, {}),
    "zo-sgd-mmt": (ZOSGD, ZOSGDReference, {"momentum": 0.9}),
    "zo-sgd-sign": (ZOSGD, ZOSGDReference, {"sign": True}),
    "zo-sgd-cons": (ZOSGD, ZOSGDReference, {"conservative": True}),
    "zo-adam": (ZOAdam, ZOAdamReference, {}),
    "forward-grad": (ForwardGrad, ForwardGradReference, {}),
}


def build_optimizer(name: str, params, **kwargs):
    """Make the optimizer registered as ``name`` (see :data:`OPTIMIZERS`)."""
    try:
        cls, _, fixed = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"Unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}") from None
    return cls(params, **{**fixed, **kwargs})


__all__ = [
    "CHUNK", "Directions", "Perturbation", "direction", "ZOOptimizer", "ZOSGD", "ZOAdam", "ForwardGrad",
    "ZOSGDReference", "ZOAdamReference", "ForwardGradReference", "OPTIMIZERS", "build_optimizer",
]
