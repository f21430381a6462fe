"""The table of optimizers: the one source of truth for names, classes, twins, configs and tests.

A row is an :class:`OptimizerInfo`: the name users type, the fast class, its reference twin (the
test oracle), the typed config section of ``optim`` in a training config, keyword arguments the name
fixes (``zo-sgd-mmt`` is ZO-SGD with ``momentum=0.9``) and the settings the generic tests use.
What a class can do is declared on the class (:class:`~forwardonly.optim.base.Capabilities`).

Adding an optimizer is one file (the class, its config dataclass, its reference twin) and one row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .base import Capabilities
from .cmaes import CMAES, CMAESConfig
from .cmaes_reference import CMAESReference
from .es import ES, ESConfig
from .es_reference import ESReference
from .forward_grad import ForwardGrad, ForwardGradConfig
from .forward_grad_reference import ForwardGradReference
from .fzoo import FZOO, FZOOConfig
from .fzoo_reference import FZOOReference
from .hizoo import HiZOO, HiZOOConfig
from .hizoo_reference import HiZOOReference
from .hybrid import ZOFOHybrid, ZOFOHybridConfig
from .hybrid_reference import ZOFOHybridReference
from .lozo import LOZO, LOZOConfig
from .lozo_reference import LOZOReference
from .sparse_mezo import SparseMeZO, SparseMeZOConfig
from .sparse_mezo_reference import SparseMeZOReference
from .zoadam import ZOAdam, ZOAdamConfig
from .zoadam_reference import ZOAdamReference
from .zosgd import ZOSGD, ZOSGDConfig
from .zosgd_block import ZOSGDBlock
from .zosgd_block_reference import ZOSGDBlockReference
from .zosgd_reference import ZOSGDReference
from .zosgd_sparse import ZOSGDSparse, ZOSGDSparseConfig
from .zosgd_sparse_reference import ZOSGDSparseReference


@dataclass(frozen=True)
class OptimizerInfo:
    """One row of :data:`OPTIMIZERS`.

    Args:
        name: what users type (``optim.name`` in a config, ``build_optimizer(name, ...)``).
        cls: the optimizer class.
        reference: its plain reference twin.
        config: the dataclass of its options (``optim``'s typed section).
        fixed: keyword arguments the name implies (defaults of the section too).
        test: settings of the generic tests (``lr``: a learning rate that learns the test problem;
            ``kwargs``: further options the test problem needs, e.g. a rank its 1 x 16 head admits;
            ``steps``: steps of the "loss goes down" test, default 300).
        summary: one line for listings.
    """

    name: str
    cls: type
    reference: type
    config: type
    fixed: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    summary: str = ""

    @property
    def capabilities(self) -> Capabilities:
        return self.cls.capabilities

    def defaults(self) -> dict:
        """The section's default values, with what the name fixes."""
        return {**{f.name: f.default for f in dataclasses.fields(self.config)
                   if f.default is not dataclasses.MISSING}, **self.fixed}

    def build(self, params, **kwargs):
        return self.cls(params, **{**self.fixed, **kwargs})

    def variant(self, name: str, fixed: dict, summary: str, test: dict | None = None) -> OptimizerInfo:
        """This row's algorithm under another name with ``fixed`` options (``zo-sgd-mmt``: ZO-SGD with
        ``momentum=0.9``); it is tested with this row's settings unless ``test`` says otherwise."""
        return dataclasses.replace(self, name=name, fixed=fixed, summary=summary,
                                   test=self.test if test is None else test)

    def validate(self, kwargs: dict) -> None:
        """Raise ``ValueError`` (the constructor's own message) if ``kwargs`` make no sense for this
        optimizer: it is built over a few stand-in parameters, before any model is loaded."""
        stand_ins = [torch.zeros(2, requires_grad=True) for _ in range(8)]
        params = ([(f"layers.{k}.weight", p) for k, p in enumerate(stand_ins)] if self.capabilities.takes_names
                  else stand_ins)
        try:
            self.build(params, **kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"optim ({self.name}): {e}") from None


_ZOSGD = OptimizerInfo("zo-sgd", ZOSGD, ZOSGDReference, ZOSGDConfig, test={"lr": 2e-3},
                       summary="MeZO: two-sided ZO-SGD in place, the memory of inference")
_HIZOO = OptimizerInfo("hizoo", HiZOO, HiZOOReference, HiZOOConfig, test={"lr": 1e-2},
                       summary="HiZOO: ZO-SGD preconditioned by a diagonal Hessian from one extra forward")
_LOZO = OptimizerInfo("lozo", LOZO, LOZOReference, LOZOConfig, test={"lr": 1e-2, "kwargs": {"rank": 1}},
                      summary="LOZO: low-rank directions U V^T per matrix, V resampled every `interval` steps")

_ROWS = [
    _ZOSGD,
    _ZOSGD.variant("zo-sgd-mmt", {"momentum": 0.9},
                   "ZO-SGD with heavy-ball momentum (one parameter-sized buffer)"),
    _ZOSGD.variant("zo-sgd-sign", {"sign": True}, "ZO-SGD along the sign of the estimate", test={"lr": 1e-2}),
    _ZOSGD.variant("zo-sgd-cons", {"conservative": True},
                   "conservative ZO-SGD: keep the best of w, w - lr g, w + lr g"),
    OptimizerInfo("zo-adam", ZOAdam, ZOAdamReference, ZOAdamConfig, test={"lr": 1e-2},
                  summary="Adam on ZO estimates, scalar second moment (4 B/param)"),
    OptimizerInfo("forward-grad", ForwardGrad, ForwardGradReference, ForwardGradConfig, test={"lr": 2e-3},
                  summary="SGD on forward gradients (forward-mode AD, exact directional derivatives)"),
    # ZO-Bench's enhancements (sec. 5): one block per step, sparse directions, first-order top blocks
    OptimizerInfo("zo-sgd-block", ZOSGDBlock, ZOSGDBlockReference, ZOSGDConfig, test={"lr": 1e-2},
                  summary="ZO-SGD on one transformer block per step"),
    OptimizerInfo("zo-sgd-sparse", ZOSGDSparse, ZOSGDSparseReference, ZOSGDSparseConfig, test={"lr": 1e-2},
                  summary="ZO-SGD on a seeded random fraction of every tensor"),
    OptimizerInfo("zo-sgd-hybrid", ZOFOHybrid, ZOFOHybridReference, ZOFOHybridConfig, test={"lr": 2e-3},
                  summary="backprop for the top blocks, ZO-SGD below"),
    # fewer forwards to the same accuracy (issue 17)
    OptimizerInfo("fzoo", FZOO, FZOOReference, FZOOConfig, test={"lr": 1e-5},
                  summary="FZOO: q one-sided probes in one batched forward, step / std of their losses"),
    _HIZOO,
    _HIZOO.variant("hizoo-l", {"low_rank": True},
                   "HiZOO-L: HiZOO with each matrix's diagonal as row and column factors"),
    OptimizerInfo("sparse-mezo", SparseMeZO, SparseMeZOReference, SparseMeZOConfig,
                  test={"lr": 1e-2, "kwargs": {"density": 0.5}},
                  summary="Sparse-MeZO: ZO-SGD on each tensor's smallest-magnitude weights"),
    _LOZO,
    _LOZO.variant("lozo-m", {"momentum": 0.9}, "LOZO-M: LOZO with momentum kept as an m x r factor per matrix",
                  test={"lr": 1e-2, "kwargs": {"rank": 1, "interval": 5}}),
    # evolution strategies (issue 23)
    OptimizerInfo("es", ES, ESReference, ESConfig, test={"lr": 1e-4},
                  summary="antithetic ES: N seeded pairs per step, centered-rank fitness shaping"),
    OptimizerInfo("cma-es", CMAES, CMAESReference, CMAESConfig,
                  test={"lr": 1.0, "kwargs": {"sigma": 0.1}, "steps": 30},
                  summary="CMA-ES (the cma package) over a small parameter set: a per-label bias, a short prompt"),
]

OPTIMIZERS: dict[str, OptimizerInfo] = {row.name: row for row in _ROWS}
"""name -> :class:`OptimizerInfo`; one row per algorithm."""


def info(name: str) -> OptimizerInfo:
    """The row of optimizer ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"Unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}") from None


def build_optimizer(name: str, params, **kwargs):
    """Make the optimizer registered as ``name`` (see :data:`OPTIMIZERS`)."""
    return info(name).build(params, **kwargs)


def takes_names(name: str) -> bool:
    """Whether optimizer ``name`` forms blocks from parameter names (pass ``(name, param)`` pairs)."""
    return info(name).capabilities.takes_names
