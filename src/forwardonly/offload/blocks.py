"""Model skeletons that hold no weights, and the placeholders that stand in for absent ones.

Which modules are the blocks that stream is :func:`forwardonly.blocks.find_blocks` (re-exported here).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..blocks import find_blocks

__all__ = ["empty_model", "find_blocks", "is_placeholder", "placeholder"]


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
