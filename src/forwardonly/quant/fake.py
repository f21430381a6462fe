"""Fake quantization for quantization-aware zeroth-order training (ZeroQAT-style W4A8 / W8A8).

The forward computes with quantized values while the arithmetic stays floating point: a value is
rounded to its integer grid and immediately scaled back. Two things are fake-quantized:

* **activations** (:func:`fake_quant_activations`): the input of every quantized linear layer, symmetric
  int8 (or int4), one absmax scale per token (``scope="token"``, default) or per tensor (``"tensor"``).
  :class:`~forwardonly.quant.QuantLinear` and :class:`FakeQuantLinear` apply it when built with
  ``act_bits`` (``QuantConfig(activations=8)``, ``model.quant.activations: 8`` in a training config).
  Per token, a sentence's outputs never depend on the other sentences of its batch; per tensor they do
  (padding included), so evaluations differ with the batch size.
* **weights** (:func:`fake_quant_weight`): group-wise round to nearest, the same grid as
  :func:`forwardonly.quant.quantize` (the tests hold them equal), recomputed from the current weight at
  every forward.

Two ways to train (ZeroQAT: Zeroth-order quantization-aware training; QZO: Shang et al., "Fine-tuning
Quantized Neural Networks with Zeroth-order Optimization", 2025), and what each costs in memory:

* **shadow weights** (``QuantConfig(shadow=True)``, scheme ``full``): :func:`fake_quantize_model` swaps
  every ``nn.Linear`` / ``nn.Embedding`` for :class:`FakeQuantLinear` / :class:`FakeQuantEmbedding`, which
  keep the floating-point weight as an ordinary parameter that ZO perturbs and updates; the forward sees
  only its quantized value. Memory: the full-precision weights (4 B/weight in fp32, 2 in bf16: no less
  than unquantized ZO) plus, one layer at a time, its perturbed copy (a fake-quantized layer takes the
  engine's whole-tensor path) and its fake-quantized copy (a block of ``chunk_rows`` rows for the large
  output layer). The ZO estimate sees a perturbation only where it moves a weight across a
  rounding boundary, so it is noisier than on unquantized weights.
* **quantization parameters** (``QuantConfig(shadow=False)``, the default, scheme ``scales``): the layers
  hold integer codes (:class:`~forwardonly.quant.QuantLinear`, 0.5 B/weight at 4 bits + 4 B per group
  for the scale, 2-4 more for a float minimum) and ZO moves only the scales (scheme ``scales``;
  a ``float_min`` layout's minimums stay frozen). Memory: the integer model, plus one layer's dequantized weight at
  a time; the only layout that stores less than the unquantized model.

Either result exports to the integer layout (:func:`export_quantized`, a file
:func:`forwardonly.quant.load_quantized` reads back, activation settings included).

Example::

    from forwardonly.quant import QuantConfig, fake_quantize_model, export_quantized
    model = fake_quantize_model(model, QuantConfig(bits=4, group_size=32, activations=8, shadow=True))
    ...                                   # ZO on model.parameters() (the shadow weights)
    export_quantized(model, "w4a8.safetensors")
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from . import packing
from .model import QuantConfig, _set, plan, quantize_model, save_quantized
from .packing import fake_quant_activations, fake_quant_weight


class _FakeQuant:
    """The weight grid and activation settings shared by the fake-quantized layers."""

    def _init_fake(self, config, act: bool) -> None:
        rows, cols = self.weight.shape
        why = packing.check_shape(rows, cols, config.bits, config.group_size,
                                  "embedding_dim" if isinstance(self, nn.Embedding) else "in_features")
        if why:
            raise ValueError(why)
        self.bits, self.group_size, self.symmetric = config.bits, config.group_size, config.symmetric
        self.float_min, self.min_dtype = config.float_min, getattr(torch, config.offsets_dtype)
        self.chunk_rows = config.chunk_rows
        self.act_bits = config.activations if act else None
        self.act_scope = config.activation_scope

    def _fq(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant_weight(w, self.bits, self.group_size, self.symmetric, self.float_min, self.min_dtype)

    @torch.no_grad()
    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        """The weight the forward uses (fake-quantized), as a dense tensor."""
        return self._fq(self.weight.detach()).to(dtype)

    def extra_repr(self) -> str:
        act = f", act_bits={self.act_bits} per {self.act_scope}" if self.act_bits else ""
        return f"{super().extra_repr()}, fake bits={self.bits}, group_size={self.group_size}{act}"


class FakeQuantLinear(_FakeQuant, nn.Linear):
    """``nn.Linear`` whose forward uses its weight fake-quantized (and its input, with ``activations``).

    The weight stays a full-precision parameter (the shadow weight that ZO trains). Build it with
    :meth:`from_linear` (or :func:`fake_quantize_model`); the settings come from a
    :class:`~forwardonly.quant.QuantConfig` (``bits``, ``group_size``, ``symmetric``, ``float_min``,
    ``offsets_dtype``, ``chunk_rows``, ``activations``, ``activation_scope``). Example::

        q = FakeQuantLinear.from_linear(nn.Linear(64, 8), QuantConfig(bits=4, group_size=32, activations=8))
        y = q(torch.randn(2, 64))
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, config: QuantConfig | None = None,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_fake(config or QuantConfig(), act=True)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig) -> FakeQuantLinear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, config, device="meta")
        new.weight, new.bias = linear.weight, linear.bias  # the same parameters: ties survive
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits:
            x = fake_quant_activations(x, self.act_bits, self.act_scope)
        w = self.weight
        bias = None if self.bias is None else self.bias.to(x.dtype)
        n, step = self.out_features, self.chunk_rows
        if n <= step:
            return F.linear(x, self._fq(w).to(x.dtype), bias)
        # large output layers (a tied head): one block of fake-quantized rows at a time
        return torch.cat([F.linear(x, self._fq(w[r:r + step]).to(x.dtype), None if bias is None else bias[r:r + step])
                          for r in range(0, n, step)], dim=-1)


class FakeQuantEmbedding(_FakeQuant, nn.Embedding):
    """``nn.Embedding`` that returns its looked-up rows fake-quantized (groups lie within a row, so only
    those rows are rounded). The table stays a full-precision parameter. Build it with :meth:`from_embedding`."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 config: QuantConfig | None = None, device=None, dtype=None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, device=device, dtype=dtype)
        self._init_fake(config or QuantConfig(), act=False)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, config: QuantConfig) -> FakeQuantEmbedding:
        if emb.max_norm is not None:
            raise ValueError("fake quantization of an embedding with max_norm is not supported")
        new = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, config, device="meta")
        new.weight = emb.weight
        if hasattr(emb, "embed_scale"):
            new.embed_scale = emb.embed_scale
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight, self.padding_idx)
        out = self._fq(rows.reshape(-1, self.embedding_dim)).reshape(rows.shape)
        scale = getattr(self, "embed_scale", None)
        return out if scale is None else out * torch.as_tensor(scale, dtype=out.dtype)


FAKE = (FakeQuantLinear, FakeQuantEmbedding)


@torch.no_grad()
def fake_quantize_model(model: nn.Module, config) -> nn.Module:
    """Swap the model's linear (and embedding) layers for fake-quantized ones that share their weights, in place.

    The same layers :func:`forwardonly.quant.quantize_model` would quantize (its :func:`~forwardonly.quant.plan`
    and checks: a bad setting raises :class:`~forwardonly.quant.QuantizationError` and changes nothing);
    a head tied to the embedding keeps the tie and takes the embedding's settings. Sets
    ``model.quant_config``. Returns the model.
    """
    for step in plan(model, config):
        m = model.get_submodule(step.names[0])
        kind = "embedding" if step.kind == "embedding" or step.tied_to is not None else "linear"
        own = config.for_kind(kind)
        new = (FakeQuantEmbedding.from_embedding(m, own) if step.kind == "embedding"
               else FakeQuantLinear.from_linear(m, own))
        new._tied = step.tied_to is not None
        for name in step.names:
            _set(model, name, new)
    model.quant_config = config
    return model


@torch.no_grad()
def unwrap_fake(model: nn.Module) -> nn.Module:
    """Give the fake-quantized layers back as plain ``nn.Linear`` / ``nn.Embedding`` (same parameters), in place."""
    made = {}
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if not isinstance(m, FAKE):
            continue
        if id(m) not in made:
            if isinstance(m, nn.Embedding):
                plain = nn.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx, device="meta")
                if hasattr(m, "embed_scale"):
                    plain.embed_scale = m.embed_scale
            else:
                plain = nn.Linear(m.in_features, m.out_features, m.bias is not None, device="meta")
                plain.bias = m.bias
            plain.weight = m.weight
            made[id(m)] = plain
        _set(model, name, made[id(m)])
    return model


@torch.no_grad()
def export_quantized(model: nn.Module, path) -> None:
    """Write a quantization-aware-trained model in the integer layout (:func:`forwardonly.quant.save_quantized`).

    A model of fake-quantized shadow weights is quantized onto the grid its forward used, with linear (not
    log) scales, so the integer model computes what the forward computed, bit for bit: with activations
    quantized, a scale off by one ulp (``exp(log s)``) could move an activation across a rounding boundary
    and its output by a whole activation step. For the write its layers are swapped for
    :class:`~forwardonly.quant.QuantLinear` / ``QuantEmbedding`` (0.5-1 B/weight more, for the moment of
    the write) and then put back, so the model trains on unchanged. A model already held in integer layers
    is written as it is (bitwise). The file records the activation settings, so
    :func:`forwardonly.quant.load_quantized` gives back a model with the same outputs (the tests hold them
    equal, shadow and scales alike).
    """
    config = getattr(model, "quant_config", None)
    if config is None or not config.shadow:
        save_quantized(model, path)
        return
    fakes = [(name, m) for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, FAKE)]
    try:
        quantize_model(unwrap_fake(model), dataclasses.replace(config, shadow=False, log_scales=False))
        save_quantized(model, path)
    finally:
        for name, m in fakes:
            _set(model, name, m)
        model.quant_config = config
