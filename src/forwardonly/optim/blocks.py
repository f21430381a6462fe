"""Blocks of parameters for block-wise ZO and hybrid ZO/FO.

A *block* is a set of parameters that is perturbed and updated together
(:class:`~forwardonly.optim.ZOSGDBlock`) or trained by the same kind of
update (:class:`~forwardonly.optim.ZOFOHybrid`). Blocks are formed from what the
optimizer is given, in this order of precedence:

* **parameter groups** (dicts), more than one: each group is a block;
* **named parameters** (``(name, tensor)`` pairs, e.g. ``model.named_parameters()``):
  every parameter whose name contains ``layers.N.`` (also ``h.N.``, ``layer.N.``,
  ``blocks.N.``) belongs to transformer block ``N``; any other parameter is its own
  block, named after its module (``model.embed_tokens``, ``model.norm``, ``lm_head``,
  a classifier ``score``). Blocks keep the order of their first parameter, so for a
  decoder they run embeddings, layer 0, ..., layer L-1, final norm, head;
* **plain tensors** (or a single group): every parameter tensor is its own block.

Each block becomes one parameter group carrying its name under ``"block"``;
per-group options of a caller's groups are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

_LAYER = re.compile(r"(?:^|\.)(layers|layer|h|blocks)\.(\d+)\.")


def block_key(name: str) -> str:
    """The block a parameter called ``name`` belongs to (see the module docstring)."""
    m = _LAYER.search(name)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    return name.rsplit(".", 1)[0] if "." in name else name


def block_groups(params) -> list[dict]:
    """Parameter groups, one per block, each with a ``"block"`` name (see the module docstring)."""
    items = list(params) if not isinstance(params, torch.Tensor) else [params]
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(x, dict) for x in items):
        if len(items) > 1:
            return [{**g, "params": list(g["params"]) if not isinstance(g["params"], torch.Tensor)
                     else [g["params"]], "block": g.get("block", f"group.{k}")} for k, g in enumerate(items)]
        (g,) = items
        tensors = list(g["params"]) if not isinstance(g["params"], torch.Tensor) else [g["params"]]
        opts = {k: v for k, v in g.items() if k != "params"}
        return [{**opts, "params": [p], "block": f"param.{k}"} for k, p in enumerate(tensors)]
    if all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items):
        order: dict[str, list] = {}
        for name, p in items:
            order.setdefault(block_key(name), []).append(p)
        return [{"params": ps, "block": key} for key, ps in order.items()]
    if all(isinstance(x, torch.Tensor) for x in items):
        return [{"params": [p], "block": f"param.{k}"} for k, p in enumerate(items)]
    raise ValueError("parameters must be tensors, (name, tensor) pairs or parameter groups, not a mix")


def names_of(groups: Iterable[dict]) -> list[str]:
    return [g["block"] for g in groups]
