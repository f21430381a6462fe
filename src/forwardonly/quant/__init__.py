"""Weight-only int4/int8 quantization for zeroth-order training (QZO).

Group-wise round-to-nearest codes live in buffers; the scales are trainable
parameters that the zeroth-order optimizers perturb and update like any other
(Shang et al., "Fine-tuning Quantized Neural Networks with Zeroth-order
Optimization", 2025). Pure PyTorch: the same code runs on CPU and GPU.

Example::

    from forwardonly.quant import quantize_model, scale_parameters
    model = quantize_model(model, bits=4, group_size=64)   # in place; fp weights freed
    for p in model.parameters():
        p.requires_grad_(False)
    params = scale_parameters(model)
    for p in params:
        p.requires_grad_(True)
    opt = ZOSGD(params, lr=1e-3, eps=1e-3, clip=100.0)     # eps, lr relative (log-scales)

A pretrained causal LM can also be read straight into quantized layers, without
ever holding its floating-point weights (same codes and scales, bit for bit)::

    model, tok = load_pretrained_quantized("smollm2-135m", bits=4, group_size=64)

Quantization-aware ZO (W4A8, W8A8: fake-quantized activations, shadow weights or trained scales, export to
the integer layout) is :mod:`forwardonly.quant.fake`.
"""

from .fake import FakeQuantEmbedding, FakeQuantLinear, export_quantized, fake_quantize_model, unwrap_fake
from .layers import QuantEmbedding, QuantLinear
from .loading import load_pretrained_quantized
from .model import (
    QuantConfig,
    QuantizationError,
    load_quantized,
    offset_parameters,
    plan,
    quantize_model,
    quantized_bytes,
    save_quantized,
    scale_parameters,
)
from .packing import dequantize, fake_quant_activations, fake_quant_weight, pack_int4, quantize, unpack_int4

__all__ = [
    "FakeQuantEmbedding",
    "FakeQuantLinear",
    "QuantConfig",
    "QuantEmbedding",
    "QuantLinear",
    "QuantizationError",
    "dequantize",
    "export_quantized",
    "fake_quant_activations",
    "fake_quant_weight",
    "fake_quantize_model",
    "load_pretrained_quantized",
    "load_quantized",
    "offset_parameters",
    "pack_int4",
    "plan",
    "quantize",
    "quantize_model",
    "quantized_bytes",
    "save_quantized",
    "scale_parameters",
    "unpack_int4",
    "unwrap_fake",
]
