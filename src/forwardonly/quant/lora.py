"""Low-rank floating-point adapters on quantized layers (QLoRA's layout, trained by ZO).

:func:`add_lora` wraps chosen :class:`~forwardonly.quant.QuantLinear` layers in
:class:`LoRAQuantLinear`: ``y = base(x) + (alpha / r) * (x @ A.T) @ B.T``. The
int4/int8 codes stay frozen; ``A`` (``r x in``, PEFT's Kaiming-uniform init) and
``B`` (``out x r``, zeros, so the model starts as the quantized one) are fp32
parameters of the wrapper itself, so the zeroth-order engine perturbs them inside
the wrapper's forward like any other module's parameters. They are the
"unquantized parameters" that QZO may train beside, or instead of, the scales; a
rank-8 adapter on a 576 x 576 layer is 9,216 floats (36 kB).

Example::

    model, tok = load_pretrained_quantized("smollm2-135m", bits=4)
    params = add_lora(model, r=8, targets=("q_proj", "v_proj"))   # the adapters' parameters
    opt = ZOSGD(params, lr=1e-4, eps=1e-3)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .layers import QuantLinear


class LoRAQuantLinear(nn.Module):
    """A frozen :class:`QuantLinear` plus a trainable rank-``r`` update (fp32)."""

    def __init__(self, base: QuantLinear, r: int = 8, alpha: float = 16.0, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base, QuantLinear):
            raise TypeError(f"LoRAQuantLinear wraps a QuantLinear, got {type(base).__name__}")
        if r < 1:
            raise ValueError(f"LoRA rank r={r} must be >= 1")
        if alpha <= 0:
            raise ValueError(f"LoRA alpha={alpha} must be positive")
        self.base, self.r, self.scaling = base, r, alpha / r
        self.in_features, self.out_features = base.in_features, base.out_features
        dev = base.qweight.device
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform_(a=sqrt(5)), as nn.Linear and PEFT
        a = torch.empty(r, base.in_features).uniform_(-bound, bound, generator=generator)  # CPU: same on any device
        self.lora_A = nn.Parameter(a.to(dev))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=dev))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        a, b = self.lora_A, self.lora_B
        return y + (F.linear(F.linear(x.to(a.dtype), a), b) * self.scaling).to(y.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}"


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, targets: Iterable[str] = ("q_proj", "v_proj"),
             seed: int = 0) -> list[nn.Parameter]:
    """Wrap every ``QuantLinear`` whose name ends with one of ``targets`` (in place).

    Returns the adapters' parameters (``requires_grad=True``), in module order; every
    other parameter is left as it was. ``seed`` fixes the ``A`` initialisation. A
    target that matches no quantized layer is an error naming what is there.
    """
    targets = tuple(targets)
    if not targets:
        raise ValueError("add_lora: targets is empty")
    gen = torch.Generator().manual_seed(seed)
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, QuantLinear) and name.rsplit(".", 1)[-1] in targets]
    hit = {name.rsplit(".", 1)[-1] for name, _ in found}
    missing = [t for t in targets if t not in hit]
    if missing:
        have = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, QuantLinear)})
        raise ValueError(f"add_lora: no QuantLinear named {missing} (quantized layers: {have})")
    params = []
    for name, m in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = LoRAQuantLinear(m, r, alpha, gen)
        setattr(parent, child, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    return params
