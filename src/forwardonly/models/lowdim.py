"""Low-dimensional parameter sets for evolution strategies: LoRA's singular values, a per-label bias.

* ``lora_svd`` (ESSA: Korotyshova et al., "ESSA: Evolutionary Strategies for Scalable Alignment", 2025):
  every LoRA adapter ``B A`` is held in SVD form ``U diag(s) V^T``. ``U`` and ``V`` are fixed: the SVD of
  the initial adapter, or, for PEFT's default zero adapter, a seeded random orthonormal pair with
  ``s = 0`` (the model starts unchanged); only the ``r`` singular values ``s`` of each adapter train.
  ``lora_A`` holds ``V^T``, ``lora_B`` holds ``U``, and a :class:`SingularValues` module between them
  scales each of the ``r`` channels. :func:`folded` writes ``U diag(s)`` into ``lora_B`` for the length
  of a ``with`` block, so a saved adapter is a plain PEFT LoRA adapter.
* ``label_bias``: a :class:`LabelBias` adds a trainable value to the logit of each label word (the
  bias of a zero-shot classifier is often most of its error); it needs the task's label-word token ids.

Example::

    model = apply_scheme(model, "lora_svd", r=4)        # trains 4 values per adapted matrix
    attach_label_bias(model, [tok_id_negative, tok_id_positive])
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

SV_NAME = "svd_values"  # no "lora_" in it: PEFT's adapter state dict leaves it out (folded() puts s in lora_B)


class SingularValues(nn.Module):
    """The ``r`` trainable singular values of one LoRA adapter: ``h -> h * s`` on the rank-``r`` channels."""

    def __init__(self, s: torch.Tensor):
        super().__init__()
        self.s = nn.Parameter(s)
        self.folding = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.folding else h * self.s.to(h.dtype)


def _orthonormal(rows: int, r: int, seed: int, dtype, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(rows, r, generator=g, dtype=torch.float64))
    return q.to(dtype=dtype, device=device)


@torch.no_grad()
def to_svd_form(model, seed: int = 0) -> int:
    """Put every LoRA adapter of a PEFT ``model`` in SVD form (see the module docstring); only the singular
    values stay trainable. Returns the number of adapters."""
    count = 0
    for module in model.modules():
        if not (hasattr(module, "lora_A") and hasattr(module, "lora_B") and isinstance(module.lora_A, nn.ModuleDict)):
            continue
        svs = nn.ModuleDict()
        for name in module.lora_A:
            a, b = module.lora_A[name].weight, module.lora_B[name].weight  # (r, in), (out, r)
            r = a.shape[0]
            delta = b.double() @ a.double()
            if torch.count_nonzero(delta):
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                u, s, vh = u[:, :r], s[:r], vh[:r]
            else:
                u = _orthonormal(b.shape[0], r, seed + 2 * count, torch.float64, "cpu")
                vh = _orthonormal(a.shape[1], r, seed + 2 * count + 1, torch.float64, "cpu").T
                s = torch.zeros(r, dtype=torch.float64)
            a.copy_(vh.to(a.dtype))
            b.copy_(u.to(b.dtype))
            a.requires_grad_(False)
            b.requires_grad_(False)
            sv = svs[name] = SingularValues(s.to(device=a.device, dtype=a.dtype))
            module.lora_A[name].register_forward_hook(lambda m, args, out, sv=sv: sv(out))
            count += 1
        module.add_module(SV_NAME, svs)
    return count


@contextlib.contextmanager
def folded(model):
    """Inside the block ``lora_B = U diag(s)`` and the singular values are a no-op: the same function, held
    as a plain LoRA adapter (for ``save_pretrained``). ``lora_B`` is restored bit for bit afterwards."""
    saved = []
    with torch.no_grad():
        for module in model.modules():
            svs = getattr(module, SV_NAME, None) if isinstance(getattr(module, SV_NAME, None), nn.ModuleDict) else None
            for name, sv in (svs or {}).items():
                w = module.lora_B[name].weight
                saved.append((w, w.detach().clone(), sv))
                w.mul_(sv.s.to(w.dtype))
                sv.folding = True
    try:
        yield model
    finally:
        with torch.no_grad():
            for w, old, sv in saved:
                w.copy_(old)
                sv.folding = False


class LabelBias(nn.Module):
    """A trainable bias on the logits of the label words (token ids ``label_ids``), one value per label."""

    def __init__(self, label_ids):
        super().__init__()
        self.register_buffer("ids", torch.as_tensor(label_ids, dtype=torch.long), persistent=False)
        self.bias = nn.Parameter(torch.zeros(len(self.ids)))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        out[..., self.ids] += self.bias.to(out.dtype)
        return out


def attach_label_bias(model, label_ids) -> LabelBias:
    """Add a :class:`LabelBias` after ``model``'s output layer (as ``model.label_bias``) and freeze everything
    else; returns it."""
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.get_output_embeddings()
    bias = LabelBias(label_ids).to(head.weight.device)
    model.add_module("label_bias", bias)
    head.register_forward_hook(lambda m, args, out: bias(out))
    return bias
