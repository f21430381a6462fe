"""Token-chunked feed-forward blocks: less activation memory for forward-only training.

A transformer's feed-forward block acts on each token on its own, and its
intermediate activations are the widest of the model (``intermediate_size``,
3x-4x the hidden size; a gated MLP holds two or three of them at once). Under
``torch.no_grad()`` - every forward of a zeroth-order step - nothing needs those
intermediates after the block returns, so running the block on a few hundred
tokens at a time bounds their memory by the chunk instead of the batch::

    from forwardonly.models.chunking import chunk_feedforward
    n = chunk_feedforward(model, tokens=128)     # returns how many blocks were wrapped
    ...                                          # ZO steps, evaluation: same results, less peak memory
    unchunk_feedforward(model)

With autograd on, the block runs whole (chunking would not free anything the
backward keeps). Results equal the unchunked block up to floating-point
reassociation in the matrix products (bitwise on the CPU kernels tried here, not
promised: tests hold them within 1e-6 relative in fp32).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

#: Attribute names of feed-forward blocks in Hugging Face decoders (Llama, Qwen2, Gemma, Mistral, OPT-style
#: ``fc1``/``fc2`` pairs are not modules of their own and are not covered).
FEEDFORWARD_NAMES = ("mlp", "feed_forward", "ffn")

_ORIGINAL = "_forwardonly_unchunked_forward"


def _chunked(module: nn.Module, tokens: int, x: torch.Tensor, *args, **kwargs):
    forward = getattr(module, _ORIGINAL)
    if torch.is_grad_enabled() or args or kwargs or x.dim() < 2:
        return forward(x, *args, **kwargs)
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] <= tokens:
        return forward(x)
    first = forward(flat[:tokens])
    out = flat.new_empty((flat.shape[0], *first.shape[1:]), dtype=first.dtype)
    out[:tokens] = first
    del first
    for start in range(tokens, flat.shape[0], tokens):
        out[start : start + tokens] = forward(flat[start : start + tokens])
    return out.view(*x.shape[:-1], *out.shape[1:])


def chunk_feedforward(model: nn.Module, tokens: int = 128, names=FEEDFORWARD_NAMES) -> int:
    """Run every feed-forward block of ``model`` on at most ``tokens`` tokens at a time under ``no_grad``.

    Blocks are the submodules whose attribute name is in ``names``. Returns how many were wrapped
    (again on a wrapped model: the chunk size is updated). Raises :class:`UserError` if ``tokens < 1``
    or if no block is found.
    """
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise UserError(f"chunk_feedforward: tokens={tokens!r} must be a positive integer")
    n = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in names:
            continue
        if not hasattr(module, _ORIGINAL):
            setattr(module, _ORIGINAL, module.forward)
        module.forward = _bind(module, tokens)
        n += 1
    if n == 0:
        raise UserError(f"chunk_feedforward: no feed-forward block named one of {list(names)} in "
                        f"{type(model).__name__}")
    return n


def _bind(module, tokens):
    def forward(x, *args, **kwargs):
        return _chunked(module, tokens, x, *args, **kwargs)

    return forward


def unchunk_feedforward(model: nn.Module) -> int:
    """Undo :func:`chunk_feedforward`; returns how many blocks were restored."""
    n = 0
    for module in model.modules():
        if hasattr(module, _ORIGINAL):
            original = getattr(module, _ORIGINAL)
            delattr(module, _ORIGINAL)
            if getattr(original, "__func__", None) is type(module).forward:
                del module.forward  # back to the class's forward
            else:
                module.forward = original  # an instance-level forward someone else had set
            n += 1
    return n
