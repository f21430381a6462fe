"""Finding a model's repeated blocks, and model skeletons that hold no weights.

A decoder is an embedding, a stack of identical blocks, and a head. The stack is
an ``nn.ModuleList`` in every Hugging Face decoder (``model.layers`` for
Llama/Qwen2/Gemma3, ``model.decoder.layers`` for OPT, ``transformer.h`` for
GPT-2), so :func:`find_blocks` looks for the list of same-typed modules that
holds the most parameters instead of knowing names per architecture.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


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


def placeholder(p: torch.Tensor, device=None) -> torch.Tensor:
    """A stand-in for a non-resident weight: right shape and dtype, one element of storage.

    It holds NaN (for floating dtypes), so a forward that bypasses the streaming
    hooks gives NaN instead of plausible numbers.
    """
    device = p.device if device is None else torch.device(device)
    if p.numel() == 0:
        return torch.empty(p.shape, dtype=p.dtype, device=device)
    one = torch.full((1,), float("nan"), dtype=p.dtype, device=device) if p.dtype.is_floating_point \
        else torch.zeros(1, dtype=p.dtype, device=device)
    return one.expand(p.shape) if p.dim() else one.view(())


def is_placeholder(t: torch.Tensor) -> bool:
    return t.numel() > 1 and 0 in t.stride() and t.untyped_storage().nbytes() <= t.element_size()


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter registered inside the block is created on the meta device; buffers are not."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.data.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def empty_model(build, device="cpu") -> nn.Module:
    """Build a model whose parameters hold no memory, ready for :class:`BlockStreamer`.

    ``build`` is a callable returning the model, e.g.
    ``lambda: AutoModelForCausalLM.from_config(config)``. Parameters are created on
    the meta device (so initialisation costs nothing) and then replaced by
    :func:`placeholder` tensors on ``device``; tied parameters stay tied and
    buffers (rotary frequencies, ...) are computed as usual.
    """
    with _parameters_on_meta():
        model = build()
    made: dict[int, nn.Parameter] = {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is None or p.device.type != "meta":
                continue
            new = made.get(id(p))
            if new is None:
                new = made[id(p)] = nn.Parameter(placeholder(p, device), requires_grad=p.requires_grad)
            mod._parameters[name] = new
    return model
