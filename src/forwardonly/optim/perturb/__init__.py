"""The perturbation engine of every zeroth-order optimizer.

* :mod:`.seeds`: what a direction is, a pure function of ``(seed, step, probe, param_index)``;
* :mod:`.masks`: elementwise multipliers of a direction (sparse ZO, a diagonal preconditioner);
* :mod:`.lowrank`: low-rank directions ``U V^T`` per matrix (LOZO);
* :mod:`.directions`: :class:`Directions`, generating and adding directions blockwise;
* :mod:`.native`: the optional C kernel of the fp32 Rademacher perturbation;
* :mod:`.fused`: perturbed ``F.linear``/``F.embedding`` that never build a whole perturbed weight;
* :mod:`.batched`: several perturbed points in one forward over a stacked batch;
* :mod:`.hooks`: :class:`Perturbation`, the one hook pair that applies a plan per module.
"""

from .arena import HOLD_BYTES
from .batched import Unpairable, current_slices, pair_batch, pair_losses, slicing
from .directions import BLOCK, Directions
from .hooks import Perturbation
from .masks import MagnitudeMask, Mask, RandomMask
from .seeds import CHUNK, KINDS, chunk_seed, direction

__all__ = ["BLOCK", "CHUNK", "HOLD_BYTES", "KINDS", "Directions", "MagnitudeMask", "Mask", "Perturbation", "RandomMask",
           "Unpairable", "chunk_seed", "current_slices", "direction", "pair_batch", "pair_losses", "slicing"]
