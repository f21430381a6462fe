"""``model.layers: N``: keep the model's first N blocks and drop the rest, so its head reads block N's output.

A linear head on a middle layer of a decoder can read a task better than one on the last
(``benchmarks/demo/probe_layers.py``: SmolLM2-135M's sentiment probe scores higher on validation on
blocks 23-29 than on block 30), and the blocks above it cost time and memory in every forward.
:func:`keep_first_layers` cuts the stack of blocks (:func:`forwardonly.blocks.find_blocks`) to its first
``n`` entries and says so in the model's config (``num_hidden_layers``, and ``layer_types`` where the
architecture has one), so the model runs, saves and reloads as the smaller model it now is. What follows
the stack (a decoder's final norm, an encoder's pooler) is kept and reads block ``n``'s output.

Example::

    model, tok = load_model("smollm2-135m", kind="classifier")
    keep_first_layers(model, 28)          # blocks 0-27; the final norm and the head read block 27's output
"""

from __future__ import annotations

from torch import nn

from ..blocks import find_blocks
from ..errors import UserError


def keep_first_layers(model: nn.Module, n: int) -> nn.Module:
    """Cut ``model``'s stack of blocks to its first ``n`` (``n = 0``: keep all); returns ``model``."""
    if n == 0:
        return model
    try:
        name, blocks = find_blocks(model)
    except ValueError as e:
        raise UserError(f"model.layers={n}: {e}") from None
    if not 1 <= n <= len(blocks):
        raise UserError(f"model.layers={n} must be between 1 and the model's {len(blocks)} blocks (0 = all)")
    if n == len(blocks):
        return model
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    setattr(owner, attr, nn.ModuleList(list(blocks)[:n]))
    configs = {id(c): c for c in (getattr(model, "config", None), getattr(owner, "config", None)) if c is not None}
    for config in configs.values():
        for sub in (config, getattr(config, "text_config", None)):
            if sub is None or not hasattr(sub, "num_hidden_layers"):
                continue
            sub.num_hidden_layers = n
            if isinstance(getattr(sub, "layer_types", None), list):
                sub.layer_types = sub.layer_types[:n]
    return model
