"""Quantize a whole model in place, and save/load quantized models as safetensors.

:func:`quantize_model` plans every replacement and checks every layer before it
touches the model: a setting some layer cannot take raises
:class:`QuantizationError` naming all such layers, and the model is left exactly
as it was. Then each ``nn.Linear`` (and, with ``embeddings=True``, each
``nn.Embedding``) is swapped for its quantized twin and the floating-point
weight is dropped, so its memory goes back to the allocator.

Tied embeddings (SmolLM2, Gemma, GPT-2: ``lm_head.weight is embed_tokens.weight``):
with ``embeddings=True`` (default) the table is quantized once and the output
layer becomes a :class:`QuantLinear` sharing its codes and its ``scales``
parameter, so the tie survives training. With ``embeddings=False`` both stay in
floating point, still tied. Quantizing one side of a tie but not the other is
refused.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from . import packing
from .layers import QuantEmbedding, QuantLinear, _Quantized

FORMAT = "forwardonly.quant/1"


class QuantizationError(UserError, ValueError):
    """A quantization setting that some layer of the model cannot take."""


@dataclass
class QuantConfig:
    """How to quantize a model.

    Attributes:
        bits: 4 or 8 (default 4).
        group_size: input features per scale (default 64).
        symmetric: symmetric codes (zero point fixed at ``2**(bits-1)``) instead of min/max (default False).
        embeddings: quantize ``nn.Embedding`` tables and the output layers tied to them (default True).
        skip: ``fnmatch`` patterns of module names left in floating point (default none).
        train_scales: make the scales trainable parameters (default True).
        log_scales: parametrise scales by their logarithm (default True).
        chunk_rows: rows dequantized at a time in large output layers (default 1024).
        offsets: give every group a trainable fp32 offset, zero at first (default False;
            see :mod:`forwardonly.quant.layers`); :func:`offset_parameters` lists them.
        float_min: llama.cpp's Q4_1 layout, ``w = q * s + m``: zero points 0 and each group's
            minimum ``m`` kept as a float in the offsets (implies ``offsets``; excludes
            ``symmetric``). Reproduces weights dequantized from Q4_1 exactly at the same group size.
        offsets_dtype: ``"float32"`` (default) or ``"float16"`` (half the bytes; exact for Q4_1's
            fp16 minimums; for offsets left frozen, as ZO updates would round away).
        embedding: settings that differ for embedding tables and the output layers tied to them, e.g.
            ``{"bits": 8, "group_size": 32, "symmetric": True}`` (default none: the same as every layer).
            SmolLM2's shipped GGUF, reproduced exactly: ``QuantConfig(bits=4, group_size=32,
            float_min=True, offsets_dtype="float16", embedding={"bits": 8, "group_size": 32,
            "symmetric": True, "float_min": False})``.
        activations: fake-quantize the input of every quantized linear layer to symmetric int8 (``8``) or
            int4 (``4``) (default None: unquantized activations). W4A8: ``bits=4, activations=8``
            (:mod:`forwardonly.quant.fake`). ``embedding={"activations": None}`` leaves the tied head's input alone.
        activation_scope: one activation scale per ``"token"`` (default) or per ``"tensor"``.
        shadow: keep full-precision shadow weights and fake-quantize them in the forward
            (:func:`forwardonly.quant.fake_quantize_model`; ZeroQAT proper, trained with scheme ``full``)
            instead of holding integer codes whose scales are trained (default False; see
            :mod:`forwardonly.quant.fake` for what each costs).
    """

    bits: int = 4
    group_size: int = 64
    symmetric: bool = False
    embeddings: bool = True
    skip: tuple[str, ...] = field(default_factory=tuple)
    train_scales: bool = True
    log_scales: bool = True
    chunk_rows: int = 1024
    offsets: bool = False
    float_min: bool = False
    offsets_dtype: str = "float32"
    embedding: dict | None = None
    activations: int | None = None
    activation_scope: str = "token"
    shadow: bool = False

    def __post_init__(self):
        why = packing.check_activations(self.activations, self.activation_scope)
        if why:
            raise QuantizationError(why)
        if self.embedding is not None:
            allowed = {"bits", "group_size", "symmetric", "log_scales", "train_scales", "offsets", "float_min",
                       "offsets_dtype", "activations", "activation_scope"}
            odd = sorted(set(self.embedding) - allowed)
            if odd:
                raise QuantizationError(f"embedding={self.embedding}: keys {odd} cannot differ for embeddings "
                                        f"(choose from {sorted(allowed)})")
            self.embedding = dict(self.embedding)
            self.for_kind("embedding")  # the embedding's own settings must be valid too
        if self.offsets_dtype not in ("float32", "float16", "bfloat16"):
            raise QuantizationError(f"offsets_dtype={self.offsets_dtype!r} is not one of float32, float16, bfloat16")
        self.skip = tuple(self.skip)
        if self.float_min and self.symmetric:
            raise QuantizationError("float_min=True and symmetric=True exclude each other")
        if self.float_min:
            self.offsets = True
        if self.bits not in packing.BITS:
            raise QuantizationError(f"bits={self.bits} is not supported (choose from {packing.BITS})")
        if self.chunk_rows < 1:
            raise QuantizationError(f"chunk_rows={self.chunk_rows} must be >= 1")

    def for_kind(self, kind: str) -> "QuantConfig":
        """The settings for one kind of layer: ``"embedding"`` (tables and the output layers tied to them,
        with :attr:`embedding` applied) or anything else (this config)."""
        if kind != "embedding" or not self.embedding:
            return self
        from dataclasses import replace

        merged = {**self.embedding}
        if merged.get("symmetric"):
            merged.setdefault("float_min", False)
        if "float_min" in merged and not merged["float_min"] and "offsets" not in merged:
            merged["offsets"] = False if self.float_min else self.offsets
        return replace(self, embedding=None, **merged)

    def layer_kwargs(self) -> dict:
        return dict(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric,
                    log_scales=self.log_scales, train_scales=self.train_scales, offsets=self.offsets,
                    float_min=self.float_min, offsets_dtype=getattr(torch, self.offsets_dtype))


def _kind(module: nn.Module, embeddings: bool) -> str | None:
    if type(module) is nn.Linear:
        return "linear"
    if embeddings and (type(module) is nn.Embedding
                       or (isinstance(module, nn.Embedding) and hasattr(module, "embed_scale"))):
        return "embedding"
    return None


@dataclass
class _Step:
    names: list[str]  # every name of the module (aliases included)
    kind: str
    tied_to: str | None = None  # primary name of the layer whose table it shares


def plan(model: nn.Module, config: QuantConfig) -> list[_Step]:
    """The replacements :func:`quantize_model` would make, embeddings first.

    Raises :class:`QuantizationError` listing every layer that cannot take ``config``.
    """
    names: dict[int, list[str]] = {}
    mods: dict[int, nn.Module] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, (nn.Linear, nn.Embedding)) and isinstance(getattr(m, "weight", None), torch.Tensor):
            names.setdefault(id(m), []).append(name)
            mods[id(m)] = m
    ties: dict[int, list[int]] = {}  # id(weight) -> module ids, in model order
    for mid, m in mods.items():
        ties.setdefault(id(m.weight), []).append(mid)
    steps, problems = [], []
    shape_problems: dict[str, list[str]] = {}  # reason -> layers (one line per reason, not per layer)
    for group in ties.values():
        kinds = [_kind(mods[i], config.embeddings) for i in group]
        skipped = [any(fnmatch.fnmatchcase(n, pat) for n in names[i] for pat in config.skip) for i in group]
        label = " = ".join(names[i][0] for i in group)
        if None in kinds or all(skipped):
            continue  # left in floating point (a tie with a non-target stays whole)
        if any(skipped):
            problems.append(f"{label}: tied layers must be skipped together (skip both or neither)")
            continue
        order = sorted(range(len(group)), key=lambda j: kinds[j] != "embedding")
        owner = group[order[0]]
        if len(group) > 1 and kinds[order[0]] != "embedding":
            problems.append(f"{label}: tied linear layers without an embedding are not supported")
            continue
        rows, cols = mods[owner].weight.shape
        own = config.for_kind(kinds[order[0]])
        why = packing.check_shape(rows, cols, own.bits, own.group_size,
                                  "embedding_dim" if kinds[order[0]] == "embedding" else "in_features")
        if why:
            shape_problems.setdefault(why, []).append(f"{names[owner][0]} ({type(mods[owner]).__name__} {cols}->{rows})")
            continue
        steps.append(_Step(names[owner], kinds[order[0]]))
        steps += [_Step(names[group[j]], kinds[j], names[owner][0]) for j in order[1:]]
    for why, layers in shape_problems.items():
        more = f" and {len(layers) - 3} more layers" if len(layers) > 3 else ""
        problems.append(f"{', '.join(layers[:3])}{more}: {why}")
    if problems:
        raise QuantizationError("cannot quantize with " + _describe(config) + ": " + "; ".join(problems))
    return sorted(steps, key=lambda s: (s.tied_to is not None, s.kind != "embedding"))


def _describe(config: QuantConfig) -> str:
    return f"bits={config.bits}, group_size={config.group_size}"


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _build(m: nn.Module, step: _Step, config: QuantConfig, made: dict, fill: bool, device=None) -> nn.Module:
    config = config.for_kind("embedding" if step.kind == "embedding" or step.tied_to is not None else step.kind)
    kw = dict(bits=config.bits, group_size=config.group_size, log_scales=config.log_scales,
              train_scales=config.train_scales, offsets=config.offsets, float_min=config.float_min,
              offsets_dtype=getattr(torch, config.offsets_dtype))
    w = m.weight
    device = w.device if device is None else device
    if step.kind == "embedding":
        if fill:
            return QuantEmbedding.from_embedding(m, symmetric=config.symmetric, **kw)
        scale = getattr(m, "embed_scale", None)
        return QuantEmbedding(m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx, dtype=w.dtype,
                              device=device, embed_scale=None if scale is None else float(scale), **kw)
    kw.update(act_bits=config.activations, act_scope=config.activation_scope)
    if step.tied_to is None and fill:
        return QuantLinear.from_linear(m, symmetric=config.symmetric, chunk_rows=config.chunk_rows, **kw)
    new = QuantLinear(m.in_features, m.out_features, bias=m.bias is not None, chunk_rows=config.chunk_rows,
                      dtype=w.dtype, device=device, **kw)
    if m.bias is not None and not m.bias.is_meta:  # a meta bias (no data yet) is loaded later
        new.bias.data.copy_(m.bias.data)
        new.bias.requires_grad_(m.bias.requires_grad)
    if step.tied_to is not None:
        new.tie_to(made[step.tied_to])
    return new


@torch.no_grad()
def quantize_model(model: nn.Module, config: QuantConfig | None = None, *, fill: bool = True,
                   device=None, **kwargs) -> nn.Module:
    """Replace the model's linear (and embedding) layers by quantized ones, in place.

    Args:
        model: any ``nn.Module``; ``nn.Linear`` layers (exact type) and ``nn.Embedding``
            tables are quantized; other layers (transformers' ``Conv1D``, norms) are
            left as they are.
        config: a :class:`QuantConfig`, or its fields as keyword arguments.
        fill: compute the codes from the current weights (default); ``False`` only
            builds the structure, for a state loaded next (:func:`load_quantized`).
        device: with ``fill=False``, where the quantized layers' tensors go (default: the
            device of the weights they replace; a model built on the ``meta`` device
            needs a real one).

    Returns the model, with ``model.quant_config`` set. All parameters other than
    the scales keep their ``requires_grad``; freeze them to train scales only (QZO).

    Example::

        model = quantize_model(model, bits=4, group_size=64)
        opt = ZOSGD(scale_parameters(model), lr=1e-4, eps=1e-3)
    """
    config = config or QuantConfig(**kwargs)
    made: dict[str, nn.Module] = {}
    for step in plan(model, config):  # every check passed: from here on nothing can fail half-way
        new = _build(model.get_submodule(step.names[0]), step, config, made, fill, None if fill else device)
        for name in step.names:
            _set(model, name, new)
        made[step.names[0]] = new
    if fill:
        _own_storage(model)
    model.quant_config = config
    return model


def _own_storage(model: nn.Module) -> None:
    """Give the parameters left in floating point storage of their own.

    A checkpoint loaded zero-copy (safetensors memory-mapped) keeps the whole
    file mapped, and its pages resident, while any tensor still views it: after
    quantization that would be a few norm weights holding hundreds of MB.
    """
    seen = set()
    for m in model.modules():
        if isinstance(m, _Quantized):
            continue
        for p in (*m._parameters.values(), *m._buffers.values()):
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                p.data = p.data.clone()


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The (deduplicated) ``scales`` parameters of the quantized layers, in module order."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, _Quantized) and id(m.scales) not in seen:
            seen.add(id(m.scales))
            out.append(m.scales)
    return out


def offset_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The (deduplicated) group ``offsets`` of the quantized layers built with ``offsets=True``, in module order."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, _Quantized) and m.offsets is not None and id(m.offsets) not in seen:
            seen.add(id(m.offsets))
            out.append(m.offsets)
    return out


def quantized_bytes(model: nn.Module) -> dict:
    """Bytes held by parameters and buffers, counting shared tensors once."""
    seen, total = set(), {"params": 0, "buffers": 0}
    for kind, tensors in (("params", model.parameters()), ("buffers", model.buffers())):
        for t in tensors:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total[kind] += t.numel() * t.element_size()
    total["total"] = total["params"] + total["buffers"]
    return total


def save_quantized(model: nn.Module, path: str | Path) -> None:
    """Write the model's state (tied tensors once) and its :class:`QuantConfig` as one safetensors file."""
    from ..io import atomic_save_safetensors

    config = getattr(model, "quant_config", None)
    if config is None:
        raise ValueError("the model is not quantized (quantize_model sets model.quant_config)")
    # the file records one QuantConfig: a model quantized in several passes with different settings
    # (say, int4 blocks and an int8 embedding) would not load back as it was, so it is refused here
    def want(m):
        c = config.for_kind("embedding" if isinstance(m, QuantEmbedding) or getattr(m, "_tied", False) else "linear")
        return (c.bits, c.group_size, c.float_min, c.offsets, getattr(torch, c.offsets_dtype) if c.offsets else None)

    odd = [name for name, m in model.named_modules() if isinstance(m, _Quantized)
           and (m.bits, m.group_size, m.float_min, m.offsets is not None,
                m.offsets.dtype if m.offsets is not None else None) != want(m)]
    if odd:
        raise QuantizationError(
            f"save_quantized: layers {odd[:3]}{' and more' if len(odd) > 3 else ''} were quantized with settings other "
            f"than model.quant_config ({_describe(config)}, float_min={config.float_min}, offsets={config.offsets}); "
            f"a file holds one configuration, so a model quantized in several passes cannot be saved this way")
    tensors, ties, by_ptr = {}, {}, {}
    for key, t in model.state_dict(keep_vars=False).items():
        ptr = (t.data_ptr(), t.shape, t.dtype)
        if ptr in by_ptr:
            ties[key] = by_ptr[ptr]
            continue
        by_ptr[ptr] = key
        tensors[key] = t.detach().contiguous()
    meta = {"format": FORMAT, "config": json.dumps(asdict(config)), "ties": json.dumps(ties)}
    atomic_save_safetensors(tensors, path, metadata=meta)


def load_quantized(model: nn.Module, path: str | Path) -> nn.Module:
    """Quantize the architecture ``model`` (as it was before :func:`save_quantized`) and load the file into it.

    Only the structure is quantized (no codes computed); every tensor then comes
    from the file. Build ``model`` in a low precision (``dtype=torch.bfloat16``)
    to lower the transient memory of its unquantized weights. Returns the model.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a forwardonly quantized model (format {meta.get('format')!r})")
    cfg = json.loads(meta["config"])
    config = QuantConfig(**{**cfg, "skip": tuple(cfg.get("skip", ()))})
    state = load_file(str(path))
    for key, src in json.loads(meta["ties"]).items():
        state[key] = state[src]
    quantize_model(model, config, fill=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path}: does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model
