"""Mixed precision for zeroth-order training: low-precision weights, fp32 compute.

:class:`MixedPrecision` is a small object with an explicit, reversible
lifecycle (``attach`` / ``detach``, or a ``with`` block). While attached, every
module that owns parameters runs its forward with those parameters cast to the
``compute`` dtype; the weights themselves stay in their ``storage`` dtype. The
casts are per module and short-lived, so at most one module's weights exist in
the compute dtype at a time (large output layers a block of ``chunk_rows`` rows
at a time; embeddings cast only the rows looked up).

Two uses:

* ``storage=torch.bfloat16`` (or fp16): weights held in 16 bits, arithmetic in
  fp32. On CPUs without bf16 matrix units a bf16 matmul is several times slower
  than fp32, and fp32 accumulation keeps small ZO perturbations visible in the
  activations.
* ``travel=torch.bfloat16`` with fp32 weights: each forward sees its weights
  rounded to bf16 and back, exactly what a weight that travels (is offloaded) in
  bf16 and is computed in fp32 sees (ZO2's AMP mode, Wang et al. 2025). The
  fp32 master weights and the optimizer's updates are untouched; only the loss
  values move, by the rounding of the weights (the tests bound it: relative
  loss change below 2e-2 on tiny models, well below the ZO estimate's own noise).

The casting wraps ``module.forward`` (an instance attribute, removed on
``detach``) rather than adding hooks, so it always runs *inside* the
perturbation hooks of :class:`forwardonly.optim.Perturbation`: it casts the
perturbed weights, and the perturbation's restore is never undone.

Example::

    model = model.to(torch.bfloat16)
    with MixedPrecision(model, compute=torch.float32):
        loss = objective.loss(model, batch)   # bf16 weights, fp32 arithmetic
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

_LOW = (torch.bfloat16, torch.float16)


class MixedPrecision:
    """Run ``model``'s forward in ``compute`` precision whatever its weights' precision.

    Args:
        model: the model; its parameters are not cast or copied.
        compute: dtype of the arithmetic and of the activations (default fp32).
        travel: optional dtype the weights are rounded through before the compute
            cast (emulates low-precision transfer of offloaded weights).
        chunk_rows: rows cast at a time in ``nn.Linear`` layers with more output rows (default 4096).
    """

    def __init__(self, model: nn.Module, compute: torch.dtype = torch.float32, travel: torch.dtype | None = None,
                 chunk_rows: int = 4096):
        if chunk_rows < 1:
            raise ValueError(f"Invalid chunk_rows: {chunk_rows}")
        if travel is not None and travel not in _LOW:
            raise ValueError(f"Invalid travel dtype: {travel} (expected one of {_LOW})")
        self.model, self.compute, self.travel, self.chunk_rows = model, compute, travel, chunk_rows
        self._wrapped: list[nn.Module] = []

    def cast(self, t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        if self.travel is not None:
            t = t.to(self.travel)
        return t.to(self.compute)

    def _linear(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute)
        w, b = module.weight, module.bias
        n, step = w.shape[0], self.chunk_rows
        if n <= step:
            return F.linear(x, self.cast(w), None if b is None else self.cast(b))
        return torch.cat([F.linear(x, self.cast(w[r:r + step]), None if b is None else self.cast(b[r:r + step]))
                          for r in range(0, n, step)], dim=-1)

    def _embedding(self, module: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        out = self.cast(F.embedding(ids, module.weight, module.padding_idx))
        scale = getattr(module, "embed_scale", None)  # Gemma's ScaledWordEmbedding
        return out if scale is None else out * scale.to(out.dtype)

    def _generic(self, module: nn.Module, forward, *args, **kwargs):
        saved = {}
        try:
            for name, p in module._parameters.items():
                if p is not None and p.is_floating_point() and (p.dtype != self.compute or self.travel):
                    saved[name] = p.data
                    p.data = self.cast(p.data)
            return forward(*args, **kwargs)
        finally:
            for name, data in saved.items():
                module._parameters[name].data = data

    def attach(self) -> MixedPrecision:
        if self._wrapped:
            raise RuntimeError("MixedPrecision is already attached")
        from .layers import _Quantized

        for m in self.model.modules():
            if isinstance(m, _Quantized) or not any(p is not None for p in m._parameters.values()):
                continue  # quantized layers compute in their input's dtype already
            if type(m) is nn.Linear:
                m.forward = types.MethodType(lambda mod, x: self._linear(mod, x), m)
            elif type(m) is nn.Embedding or (isinstance(m, nn.Embedding) and hasattr(m, "embed_scale")):
                m.forward = types.MethodType(lambda mod, ids: self._embedding(mod, ids), m)
            else:
                inner = m.forward
                m.forward = types.MethodType(
                    lambda mod, *a, _f=inner, **k: self._generic(mod, _f, *a, **k), m)
            self._wrapped.append(m)
        return self

    def detach(self) -> None:
        for m in self._wrapped:
            del m.forward
        self._wrapped = []

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()
        return False
