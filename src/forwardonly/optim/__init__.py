"""Zeroth-order optimizers with the ``torch.optim`` API.

Every optimizer's ``step(closure)`` runs forward passes only. Each fast optimizer has a plain
reference twin (``*Reference``) that follows the paper line by line and serves as the test oracle.
The registry (:data:`OPTIMIZERS`, :mod:`forwardonly.optim.registry`) lists them by name; the
perturbation engine they share is :mod:`forwardonly.optim.perturb`.
"""

from .base import Capabilities, ZOConfig, ZOOptimizer
from .cmaes import CMAES
from .cmaes_reference import CMAESReference
from .es import ES
from .es_reference import ESReference
from .forward_grad import ForwardGrad
from .forward_grad_reference import ForwardGradReference
from .fzoo import FZOO
from .fzoo_reference import FZOOReference
from .hizoo import HiZOO
from .hizoo_reference import HiZOOReference
from .hybrid import ZOFOHybrid
from .hybrid_reference import ZOFOHybridReference
from .lozo import LOZO
from .lozo_reference import LOZOReference
from .perturb import (
    CHUNK,
    Directions,
    MagnitudeMask,
    Perturbation,
    RandomMask,
    Unpairable,
    direction,
    pair_batch,
    pair_losses,
)
from .registry import OPTIMIZERS, OptimizerInfo, build_optimizer, info, takes_names
from .sparse_mezo import SparseMeZO
from .sparse_mezo_reference import SparseMeZOReference
from .zoadam import ZOAdam
from .zoadam_reference import ZOAdamReference
from .zosgd import ZOSGD
from .zosgd_block import ZOSGDBlock
from .zosgd_block_reference import ZOSGDBlockReference
from .zosgd_reference import ZOSGDReference
from .zosgd_sparse import ZOSGDSparse
from .zosgd_sparse_reference import ZOSGDSparseReference

__all__ = [
    "CHUNK",
    "CMAES",
    "ES",
    "FZOO",
    "LOZO",
    "OPTIMIZERS",
    "ZOSGD",
    "CMAESReference",
    "Capabilities",
    "Directions",
    "ESReference",
    "FZOOReference",
    "ForwardGrad",
    "ForwardGradReference",
    "HiZOO",
    "HiZOOReference",
    "LOZOReference",
    "MagnitudeMask",
    "OptimizerInfo",
    "Perturbation",
    "RandomMask",
    "SparseMeZO",
    "SparseMeZOReference",
    "Unpairable",
    "ZOAdam",
    "ZOAdamReference",
    "ZOConfig",
    "ZOFOHybrid",
    "ZOFOHybridReference",
    "ZOOptimizer",
    "ZOSGDBlock",
    "ZOSGDBlockReference",
    "ZOSGDReference",
    "ZOSGDSparse",
    "ZOSGDSparseReference",
    "build_optimizer",
    "direction",
    "info",
    "pair_batch",
    "pair_losses",
    "takes_names",
]
