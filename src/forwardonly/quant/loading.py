"""Load a pretrained causal LM straight into quantized layers, never building it in floating point.

:func:`forwardonly.quant.quantize_model` on a loaded model first holds every
weight in floating point (538 MB for SmolLM2-135M in fp32) and then frees it;
what the allocator keeps of that, and the import and loading machinery around
it, stays in the process. :func:`load_pretrained_quantized` instead

1. builds the architecture with its parameters on the ``meta`` device (no
   memory; buffers such as rotary frequencies are computed as usual) and ties
   the output layer to the embedding as ``from_pretrained`` would;
2. replaces the linear and embedding layers by quantized ones on the CPU
   (:func:`~forwardonly.quant.quantize_model` with ``fill=False``);
3. reads each weight from the checkpoint's safetensors file(s) ``block_rows``
   rows at a time and quantizes the block into its rows of codes and scales
   (:meth:`~forwardonly.quant.layers._Quantized.fill_rows`), so the largest
   temporary is one block, not one matrix;
4. loads the remaining tensors (norms, biases) in the model's dtype.

Groups never span rows, so the codes and scales are bitwise those of loading
the floating-point model and quantizing it; the tests hold this. Every key is
checked against the file before any weight is read.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .layers import QuantEmbedding, _Quantized
from .model import QuantConfig, plan, quantize_model


def _checkpoint_files(where: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of a model directory (single file or sharded with an index)."""
    index = where / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: where / v for k, v in weight_map.items()}
    single = where / "model.safetensors"
    if not single.is_file():
        raise UserError(f"{where}: no model.safetensors (or index) to load quantized weights from")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


@torch.no_grad()
def load_pretrained_quantized(spec: str, config: QuantConfig | None = None, *, dtype=torch.float32,
                              block_rows: int = 1024, **kwargs):
    """``(model, tokenizer)``: a causal LM with quantized layers, read block by block from its checkpoint.

    Args:
        spec: a zoo name or a Hugging Face model directory with safetensors weights
            (as :func:`forwardonly.models.load_model`).
        config: a :class:`~forwardonly.quant.QuantConfig`, or its fields as keyword arguments.
        dtype: dtype of the parameters left in floating point (norms, biases) and of the
            embedding's output (default ``torch.float32``).
        block_rows: weight rows read and quantized at a time (default 1024).

    The result equals ``quantize_model(load_model(spec, dtype=dtype)[0], config)``
    bit for bit, with ``model.quant_config`` set, in eval mode. Example::

        model, tok = load_pretrained_quantized("smollm2-135m", bits=4, group_size=64)
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from ..models.loading import prepare_tokenizer, resolve

    if block_rows < 1:
        raise ValueError(f"Invalid block_rows: {block_rows}")
    config = config or QuantConfig(**kwargs)
    where, kind = resolve(spec)
    if not isinstance(where, Path):
        raise UserError(f"{spec!r}: quantized loading needs a local model directory or zoo model")
    hf_config = AutoConfig.from_pretrained(where, local_files_only=True)
    if kind == "classifier":
        raise UserError(f"{spec!r}: quantized loading supports causal LMs only")
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model.tie_weights()
    steps = plan(model, config)  # raises QuantizationError before anything is read
    _fill(model, steps, config, where, block_rows)
    left = [k for k, t in _rest_keys(model, set()).items() if t.is_meta]
    if left:
        raise UserError(f"{where}: tensors still without data after loading: {left[:5]}")
    tok = AutoTokenizer.from_pretrained(where, local_files_only=True)
    try:
        model.generation_config = GenerationConfig.from_pretrained(where, local_files_only=True)
    except OSError:
        pass  # no generation_config.json: keep the one derived from the model config
    prepare_tokenizer(tok, model)
    model.quant_config = config
    return model.eval(), tok


def _expected(model: nn.Module, steps) -> tuple[dict[str, nn.Module], dict[str, tuple]]:
    """The layers that own quantized weights, and every checkpoint tensor the model needs, with its shape."""
    owners = {s.names[0]: model.get_submodule(s.names[0]) for s in steps if s.tied_to is None}
    expect = {n + ".weight": tuple(m.weight.shape) for n, m in owners.items()}
    for s in steps:
        bias = getattr(model.get_submodule(s.names[0]), "bias", None)
        if s.kind == "linear" and bias is not None:
            expect[s.names[0] + ".bias"] = tuple(bias.shape)
    skip = {n for s in steps for n in s.names}
    expect.update((k, tuple(t.shape)) for k, t in _rest_keys(model, skip).items() if t.is_meta)
    return owners, expect


def _fill(model: nn.Module, steps, config: QuantConfig, where: Path, block_rows: int) -> None:
    """Check the checkpoint against the model, then quantize its weights into the model block by block."""
    owners, expect = _expected(model, steps)
    files = _checkpoint_files(where)
    with ExitStack() as stack:
        from safetensors import safe_open

        opened = {}

        def tensor(key):
            path = files[key]
            if path not in opened:
                opened[path] = stack.enter_context(safe_open(str(path), framework="pt"))
            return opened[path].get_slice(key)

        missing = [k for k in expect if k not in files]
        if missing:
            raise UserError(f"{where}: the checkpoint lacks {len(missing)} tensor(s) the model needs, "
                            f"e.g. {missing[:3]} (load it with load_model and quantize it instead)")
        wrong = [f"{k} {tuple(tensor(k).get_shape())} (model: {shape})" for k, shape in expect.items()
                 if tuple(tensor(k).get_shape()) != shape]
        if wrong:
            raise UserError(f"{where}: shapes differ from the model's: {'; '.join(wrong[:3])}")
        # every check passed: build the quantized layers and fill them
        quantize_model(model, config, fill=False, device="cpu")
        for name in owners:
            layer, src = model.get_submodule(name), tensor(name + ".weight")
            for r in range(0, expect[name + ".weight"][0], block_rows):
                kind = "embedding" if isinstance(layer, QuantEmbedding) else "linear"
                layer.fill_rows(r, src[r:r + block_rows], config.for_kind(kind).symmetric)
        for key, t in _rest_keys(model, set()).items():
            if key in files:
                _assign(model, key, tensor(key)[:].to(t.dtype))


def _rest_keys(model: nn.Module, skip_modules: set[str]) -> dict[str, torch.Tensor]:
    """State keys loaded as-is: parameters and persistent buffers outside the quantized layers'
    codes and scales (a quantized linear's bias counts), one key per tensor (tied ones under their first name)."""
    out, seen = {}, set()
    for mname, m in model.named_modules(remove_duplicate=False):
        if mname in skip_modules:
            continue
        quant = isinstance(m, _Quantized)
        tensors = [(n, p) for n, p in m._parameters.items() if p is not None and not (quant and n == "scales")]
        if not quant:
            tensors += [(n, b) for n, b in m._buffers.items()
                        if b is not None and n not in m._non_persistent_buffers_set]
        for n, t in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            out[f"{mname}.{n}" if mname else n] = t
    return out


def _assign(model: nn.Module, key: str, value: torch.Tensor) -> None:
    mname, _, n = key.rpartition(".")
    m = model.get_submodule(mname) if mname else model
    if n in m._parameters:
        old = m._parameters[n]
        new = nn.Parameter(value.clone(), requires_grad=old.requires_grad)
        for other in model.modules():  # keep ties: every module holding the old parameter gets the new one
            for pn, p in other._parameters.items():
                if p is old:
                    other._parameters[pn] = new
    else:
        m._buffers[n].copy_(value)
