"""Group-wise round-to-nearest quantization of weight matrices, and int4 packing.

A ``(rows, cols)`` matrix is cut along ``cols`` into groups of ``group_size``
consecutive elements; each group ``g`` of row ``r`` gets a scale ``s[r, g]``
and a zero point ``z[r, g]``, and each element an unsigned code ``q`` in
``[0, 2**bits - 1]``::

    w  ~  (q - z) * s

* asymmetric (default): ``s = (max - min) / (2**bits - 1)`` and ``z`` the
  rounded code of 0.0, so the group's range maps onto all the codes;
* symmetric: ``z = 2**(bits-1)`` for every group and ``s = absmax / (2**(bits-1) - 1)``;
* float minimum (``float_min=True``, llama.cpp's Q4_1 layout): ``w ~ q * s + m`` with
  ``z = 0``, ``s = (max - min) / (2**bits - 1)`` and the group's minimum ``m`` kept as a
  float (returned as the offsets of :class:`~forwardonly.quant.QuantLinear`). Weights
  that already sit on such a grid (a checkpoint dequantized from Q4_1 with the same
  groups) come back exactly.

Rounding to the nearest code and clamping into range keep every element within
``s / 2`` of its original value (the tests hold this bound). Codes are stored as
``uint8``: one per byte for 8 bits, two per byte for 4 bits (element ``2j`` in the
low nibble, ``2j + 1`` in the high one). Zero points are stored as ``uint8``,
one per group.
"""

from __future__ import annotations

import torch

BITS = (4, 8)
_TINY = 1e-12  # scale of an all-zero group; keeps log-scales finite


def check_shape(rows: int, cols: int, bits: int, group_size: int, what: str = "in_features") -> str | None:
    """Why a ``(rows, cols)`` matrix cannot take these settings, or ``None`` if it can."""
    if bits not in BITS:
        return f"bits={bits} is not supported (choose from {BITS})"
    if group_size < 2 or (group_size % 2 and bits == 4):
        return f"group_size={group_size} must be an even number >= 2"
    if cols % group_size:
        return f"{what}={cols} is not divisible by group_size={group_size}"
    return None


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """``(rows, cols)`` codes in ``[0, 15]`` -> ``(rows, cols // 2)`` bytes."""
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``(..., n)`` bytes -> ``(..., 2n)`` codes (uint8)."""
    out = torch.stack((packed & 0x0F, packed >> 4), dim=-1)
    return out.view(*packed.shape[:-1], packed.shape[-1] * 2)


def quantize(w: torch.Tensor, bits: int = 4, group_size: int = 64, symmetric: bool = False,
             float_min: bool = False, min_dtype=torch.float32):
    """Quantize a 2-D weight group-wise.

    Returns ``(qweight, scales, zeros)``: ``qweight`` uint8 (packed for 4 bits),
    ``scales`` fp32 ``(rows, cols // group_size)``, ``zeros`` uint8 of the same shape;
    with ``float_min=True``, ``(qweight, scales, zeros, minimums)`` (zeros all 0,
    minimums rounded to ``min_dtype`` first, so the codes fit the minimum that is stored,
    returned in fp32). Statistics are computed in fp32 whatever the dtype of ``w``.
    """
    if symmetric and float_min:
        raise ValueError("symmetric and float_min exclude each other")
    rows, cols = w.shape
    why = check_shape(rows, cols, bits, group_size)
    if why:
        raise ValueError(why)
    qmax = 2**bits - 1
    g = w.detach().float().reshape(rows, cols // group_size, group_size)
    if float_min:
        lo = g.amin(-1).to(min_dtype).float()
        scales = ((g.amax(-1) - lo) / qmax).clamp_min(_TINY)
        codes = (g - lo.unsqueeze(-1)).div_(scales.unsqueeze(-1)).round_().clamp_(0, qmax)
        codes = codes.reshape(rows, cols).to(torch.uint8)
        qweight = pack_int4(codes) if bits == 4 else codes
        zeros = torch.zeros(scales.shape, dtype=torch.uint8, device=scales.device)
        return qweight.contiguous(), scales.contiguous(), zeros, lo.contiguous()
    if symmetric:
        half = 2 ** (bits - 1)
        scales = (g.abs().amax(-1) / (half - 1)).clamp_min(_TINY)
        zeros = torch.full_like(scales, half)
    else:
        lo = g.amin(-1).clamp_max(0.0)  # keep 0.0 representable (exactly zero weights stay zero)
        hi = g.amax(-1).clamp_min(0.0)
        scales = ((hi - lo) / qmax).clamp_min(_TINY)
        zeros = (-lo / scales).round().clamp(0, qmax)
    codes = (g / scales.unsqueeze(-1)).round_().add_(zeros.unsqueeze(-1)).clamp_(0, qmax)
    codes = codes.reshape(rows, cols).to(torch.uint8)
    qweight = pack_int4(codes) if bits == 4 else codes
    return qweight.contiguous(), scales.contiguous(), zeros.to(torch.uint8).contiguous()


def codes_of(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes, one per element (uint8)."""
    return unpack_int4(qweight) if bits == 4 else qweight


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
               dtype=torch.float32, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """``(q - z) * s`` (``+ b`` with group ``offsets``) for the rows given, in fp32, rounded once to ``dtype``.

    ``qweight``, ``scales`` and ``zeros`` may be any matching row slice (or rows
    gathered by an index) of the full tensors. The codes are unpacked straight
    into the fp32 result (no intermediate code tensor), which is then scaled in place.
    """
    lead = qweight.shape[:-1]
    cols = qweight.shape[-1] * (2 if bits == 4 else 1)
    w = torch.empty(*lead, cols, dtype=torch.float32, device=qweight.device)
    if bits == 4:
        pairs = w.view(*lead, cols // 2, 2)
        pairs[..., 0].copy_(qweight & 0x0F)
        pairs[..., 1].copy_(qweight >> 4)
    else:
        w.copy_(qweight)
    ngroups = scales.shape[-1]
    g = w.view(*lead, ngroups, cols // ngroups)
    if zeros is not None:  # None: every zero point 0 (float minimums)
        g.sub_(zeros.unsqueeze(-1))
    g.mul_(scales.float().unsqueeze(-1))
    if offsets is not None:
        g.add_(offsets.float().unsqueeze(-1))
    return w if dtype == torch.float32 else w.to(dtype)


ACT_SCOPES = ("token", "tensor")


def check_activations(bits, scope: str = "token") -> str | None:
    """Why these activation settings are invalid, or None."""
    if bits is not None and (isinstance(bits, bool) or bits not in BITS):
        return f"activations={bits} is not supported (choose from {BITS}, or null for none)"
    if scope not in ACT_SCOPES:
        return f"activation_scope={scope!r} is not one of {ACT_SCOPES}"
    return None


def fake_quant_activations(x: torch.Tensor, bits: int = 8, scope: str = "token") -> torch.Tensor:
    """``x`` rounded to a symmetric ``bits``-bit grid (codes ``-(2**(bits-1)-1) .. 2**(bits-1)-1``) and scaled back.

    One absmax scale per token (the last dimension, ``scope="token"``) or for the whole tensor
    (``"tensor"``), computed in fp32; the result has ``x``'s dtype. Every element moves by at most half its
    scale. An all-zero token stays zero.
    """
    why = check_activations(bits, scope)
    if why:
        raise ValueError(why)
    qmax = 2 ** (bits - 1) - 1
    xf = x.float()
    amax = xf.abs().amax(-1, keepdim=True) if scope == "token" else xf.abs().amax()
    scale = (amax / qmax).clamp_min(_TINY)
    out = (xf / scale).round_().clamp_(-qmax, qmax).mul_(scale)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def fake_quant_weight(w: torch.Tensor, bits: int = 4, group_size: int = 64, symmetric: bool = False,
                      float_min: bool = False, min_dtype=torch.float32) -> torch.Tensor:
    """``w`` (2-D) on the group-wise grid of :func:`forwardonly.quant.quantize`, scaled back (fp32 arithmetic, ``w``'s dtype).

    Equals ``dequantize(*quantize(w, ...))`` up to fp32 rounding, without packing codes: the grid is
    recomputed from ``w`` itself, so a perturbed or updated shadow weight is fake-quantized afresh.
    """
    rows, cols = w.shape
    why = check_shape(rows, cols, bits, group_size)
    if why:
        raise ValueError(why)
    qmax = 2**bits - 1
    g = w.float().reshape(rows, cols // group_size, group_size)
    if float_min:
        lo = g.amin(-1, keepdim=True).to(min_dtype).float()
        s = ((g.amax(-1, keepdim=True) - lo) / qmax).clamp_min(_TINY)
        out = (g - lo).div_(s).round_().clamp_(0, qmax).mul_(s).add_(lo)
    else:
        if symmetric:
            half = 2 ** (bits - 1)
            s = (g.abs().amax(-1, keepdim=True) / (half - 1)).clamp_min(_TINY)
            z = torch.full_like(s, half)
        else:
            lo = g.amin(-1, keepdim=True).clamp_max(0.0)
            s = ((g.amax(-1, keepdim=True).clamp_min(0.0) - lo) / qmax).clamp_min(_TINY)
            z = (-lo / s).round().clamp(0, qmax)
        out = (g / s).round_().add_(z).clamp_(0, qmax).sub_(z).mul_(s)
    out = out.reshape(rows, cols)
    return out if w.dtype == torch.float32 else out.to(w.dtype)
