"""What a *block* is, in one place: an entry of the model's stack of repeated blocks.

A decoder is an embedding, a stack of identical blocks, and a head. The stack is an ``nn.ModuleList``
in every Hugging Face decoder (``model.layers`` for Llama/Qwen2/Gemma3, ``model.decoder.layers`` for
OPT, ``transformer.h`` for GPT-2, ``encoder.layer`` for BERT):

* with the model at hand, :func:`find_blocks` finds it as the list of same-typed modules that holds
  the most parameters (block streaming, :mod:`forwardonly.offload`);
* from parameter names alone (what an optimizer is given), :func:`block_key` reads the same thing:
  a parameter named ``<stack>.<i>.<...>`` with the stack's name ending in ``layers``, ``layer``,
  ``h`` or ``blocks`` belongs to block ``i``; any other parameter is a block of its own, named after
  its module. ``tests/test_blocks.py`` holds the two readings equal on every tiny architecture.

:func:`block_groups` turns what an optimizer is given into one parameter group per block
(:class:`~forwardonly.optim.ZOSGDBlock`, :class:`~forwardonly.optim.ZOFOHybrid`), in this order of
precedence: several parameter groups (each is a block); named parameters (blocks as above, in the
order of their first parameter: embeddings, block 0, ..., block L-1, final norm, head); plain tensors
or a single group (every tensor is its own block). Each group carries its name under ``"block"``;
per-group options of a caller's groups are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

STACK_NAMES = ("layers", "layer", "h", "blocks")
"""The names Hugging Face models give their stack of blocks (what :func:`block_key` recognises)."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(qualified_name, module_list)`` of the model's stack of blocks."""
    best, best_n = None, 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) < 2:
            continue
        if len({type(m) for m in mod}) != 1:
            continue
        n = sum(p.numel() for p in mod.parameters())
        if n > best_n:
            best, best_n = (name, mod), n
    if best is None:
        raise ValueError(f"{type(model).__name__} has no stack of repeated blocks (an nn.ModuleList of "
                         "same-typed modules with parameters) to stream")
    return best


_LAYER = re.compile(r"(?:^|\.)(" + "|".join(STACK_NAMES) + r")\.(\d+)\.")


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
