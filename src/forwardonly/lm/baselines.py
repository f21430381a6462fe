"""Memory-efficient first-order baselines that ZO is measured against (the ``baselines`` extra).

* ``fo-lomo``: LOMO (Lv et al. 2023, "Full Parameter Fine-tuning for Large Language Models with Limited
  Resources"): plain SGD fused into the backward pass, so each parameter's gradient is applied and freed
  as soon as it is computed and the whole gradient never exists at once (``lomo-optim``'s ``Lomo``).
* ``fo-adalomo``: AdaLomo (Lv et al. 2023): LOMO with Adafactor-style factored second moments
  (``lomo-optim``'s ``AdaLomo``). That package allocates the moments with ``.cuda()``: CUDA only.
* ``fo-galore``: GaLore (Zhao et al. 2024, "Memory-Efficient LLM Training by Gradient Low-Rank
  Projection"): Adam whose moments live in a rank-``rank`` projection of each weight matrix's gradient
  (``galore-torch``'s ``GaLoreAdamW``); the matrices of the blocks are projected, vectors, embeddings and
  the output head take plain Adam.

The options of every first-order baseline, ``fo-sgd`` and ``fo-adam`` included, are here too: each is a
:class:`FirstOrderConfig` (``lr``, ``weight_decay``, ``grad_checkpointing``) plus its own. LOMO and AdaLomo
update inside ``backward``: a step is one micro-batch (``accum_steps`` must be 1), run through
:class:`FusedBackward`.

Example::

    forwardonly train model=smollm2-135m task=sentiment scheme.name=full optim.name=fo-galore optim.lr=1e-4 optim.rank=64
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import UserError, require


@dataclass
class FirstOrderConfig:
    """The options every first-order baseline takes (the base of each one's typed ``optim`` section).

    Args:
        lr: learning rate.
        weight_decay: L2 penalty (decoupled for the AdamW-style ones: ``fo-adam``, AdaLomo, GaLore).
        grad_checkpointing: recompute activations in the backward pass (less memory).
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_checkpointing: bool = False


@dataclass
class FOSGDConfig(FirstOrderConfig):
    """``fo-sgd``: backpropagation with ``torch.optim.SGD`` (a baseline).

    Args:
        momentum: SGD momentum.
    """

    momentum: float = 0.0


@dataclass
class FOAdamConfig(FirstOrderConfig):
    """``fo-adam``: backpropagation with ``torch.optim.AdamW`` (a baseline).

    Args:
        betas: Adam's moment decays.
    """

    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class FOLomoConfig(FirstOrderConfig):
    """``fo-lomo``: LOMO, SGD fused into the backward pass.

    Args:
        clip_grad_value: clip each gradient entry to ``[-v, v]`` (none by default).
    """

    clip_grad_value: float | None = None


@dataclass
class FOAdaLomoConfig(FirstOrderConfig):
    """``fo-adalomo``: AdaLomo, LOMO with factored second moments (CUDA only, as ``lomo-optim`` ships it).

    Args:
        clip_threshold: Adafactor's update clipping threshold.
    """

    clip_threshold: float = 1.0


@dataclass
class FOGaLoreConfig(FOAdamConfig):
    """``fo-galore``: GaLore-AdamW, Adam moments in a low-rank projection of each matrix's gradient.

    Args:
        rank: rank of the projection (GaLore's r).
        update_proj_gap: steps between recomputing a projection (an SVD of the gradient).
        scale: GaLore's alpha, the factor on the projected-back update.
        proj_type: which side is projected (``std``: the smaller one).
    """

    rank: int = 128
    update_proj_gap: int = 200
    scale: float = 0.25
    proj_type: Literal["std", "reverse_std", "right", "left"] = "std"

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"rank={self.rank} must be at least 1")
        if self.update_proj_gap < 1:
            raise ValueError(f"update_proj_gap={self.update_proj_gap} must be at least 1")


BASELINES = {"fo-lomo": FOLomoConfig, "fo-adalomo": FOAdaLomoConfig, "fo-galore": FOGaLoreConfig}
"""Memory-efficient first-order baselines: name -> options."""
FUSED = ("fo-lomo", "fo-adalomo")
"""Baselines that update inside ``backward`` (one micro-batch per step)."""


class FusedBackward:
    """A LOMO-family optimizer as the training loop drives it: :meth:`backward_step` runs ``backward``,
    which applies each gradient as it arrives; there is no separate ``step``.

    ``param_groups`` are the inner optimizer's (the loop sets the scheduled ``lr`` there); ``state_dict``
    round-trips through it (AdaLomo keeps its moments outside it: a resumed AdaLomo run restarts them).
    """

    def __init__(self, inner):
        self.inner = inner
        self.param_groups = inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass  # the hooks free every gradient as soon as they have applied it

    def backward_step(self, loss: torch.Tensor) -> None:
        self.inner.fused_backward(loss, self.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def build_baseline(name: str, o, params: list, names: list[str] | None = None):
    """The optimizer of baseline ``name`` with options ``o`` over ``params`` (``names`` pick GaLore's matrices)."""
    if name == "fo-galore":
        return _galore(o, params, names)
    lomo = require("lomo_optim", f"optim.name={name}")
    holder = torch.nn.ParameterList(params)  # lomo-optim hooks the parameters of a module it is given
    if name == "fo-lomo":
        return FusedBackward(lomo.Lomo(holder, lr=o.lr, weight_decay=o.weight_decay,
                                       clip_grad_value=o.clip_grad_value))
    if any(p.device.type != "cuda" for p in params):
        raise UserError("optim.name=fo-adalomo: lomo-optim's AdaLomo allocates its moments with .cuda(); "
                        "run it with device=cuda")
    return FusedBackward(lomo.AdaLomo(holder, lr=o.lr, weight_decay=o.weight_decay, clip_threshold=o.clip_threshold))


def _galore(o, params: list, names: list[str] | None):
    galore = require("galore_torch", "optim.name=fo-galore")
    names = names if names is not None else [""] * len(params)
    projected = [p for n, p in zip(names, params) if p.dim() == 2 and not _dense(n)]
    ids = {id(p) for p in projected}
    rest = [p for p in params if id(p) not in ids]
    groups = [g for g in ({"params": rest},) if g["params"]]
    if projected:
        groups.append({"params": projected, "rank": o.rank, "update_proj_gap": o.update_proj_gap,
                       "scale": o.scale, "proj_type": o.proj_type})
    return galore.GaLoreAdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                              no_deprecation_warning=True)


def _dense(name: str) -> bool:
    """Matrices GaLore leaves to plain Adam: token embeddings and the output head (as its authors do)."""
    return any(k in name for k in ("embed", "lm_head", "wte", "score", "classifier"))
