"""Weight-only quantized ``Linear`` and ``Embedding`` layers with trainable scales.

The integer codes and zero points are buffers (never trained); the group-wise
scales are an ``nn.Parameter``, so the zeroth-order engine perturbs and updates
them like any other parameter (inside the layer's forward, never writing them;
see :class:`forwardonly.optim.Perturbation`). This is QZO (Shang et al.,
"Fine-tuning Quantized Neural Networks with Zeroth-order Optimization", 2025):
the weights stay quantized, only the continuous scales move.

With ``log_scales=True`` (default) the parameter holds ``log(s)``: a
perturbation or update of size ``eps`` changes every scale by the same
*relative* amount ``exp(eps) - 1 ~ eps``, whatever its magnitude, so the usual
``eps=1e-3`` means a 0.1% nudge, scales can never change sign, and the same
``eps``/``lr`` suit scales and unquantized parameters (norm weights ~1).
Keep the scales in fp32 (as built): ``model.to(torch.bfloat16)`` would cast
them too, and a bf16 log-scale is only good to about 2% of the scale.

With ``offsets=True`` each group also gets a trainable fp32 offset ``b`` (zero at
first, so the model starts as quantized): ``w = (q - z) * s + b``. Where a scale can
only stretch a group about its zero point, an offset moves all its weights
together, and its gradient is the sum of the group's weight gradients (no
weight factor to cancel in the sum), so ZO finds far more signal per entry in the
offsets than in the scales. 4 bytes per group: 0.0625 B/weight at group 64.
With ``float_min=True`` the offsets start at each group's minimum instead (and the
zero points at 0): llama.cpp's Q4_1 layout, ``w = q * s + m``, which reproduces a
checkpoint dequantized from Q4_1 exactly when the groups match (SmolLM2's shipped
GGUF: every block linear, group 32).

Forward dequantizes in fp32 (one rounding to the compute dtype) and, for
matrices with more than ``chunk_rows`` output rows (an untied or tied
``lm_head``), does so a block of rows at a time, so the temporary is at most
``chunk_rows x in_features`` values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import packing


class _Quantized(nn.Module):
    """Codes, zero points and scales of one ``(rows, cols)`` matrix; the layers below add the op.

    The scales are a parameter of the layer itself (not of a helper submodule),
    so the perturbation hooks, which act on the module being called, see them.
    """

    def _init_quant(self, rows: int, cols: int, bits: int, group_size: int, log_scales: bool,
                    train_scales: bool, device=None, offsets: bool = False, float_min: bool = False,
                    offsets_dtype=torch.float32):
        why = packing.check_shape(rows, cols, bits, group_size)
        if why:
            raise ValueError(why)
        if float_min and not offsets:
            raise ValueError("float_min=True keeps each group's minimum in the offsets: it needs offsets=True")
        self.bits, self.group_size, self.log_scales = bits, group_size, bool(log_scales)
        self.float_min = bool(float_min)
        width = cols // 2 if bits == 4 else cols
        ngroups = cols // group_size
        self.register_buffer("qweight", torch.zeros(rows, width, dtype=torch.uint8, device=device))
        # float minimums: every zero point is 0, so none is stored
        self.register_buffer("zeros", None if float_min else torch.zeros(rows, ngroups, dtype=torch.uint8, device=device))
        self.scales = nn.Parameter(torch.zeros(rows, ngroups, device=device), requires_grad=train_scales)
        self.offsets = (nn.Parameter(torch.zeros(rows, ngroups, dtype=offsets_dtype, device=device)) if offsets
                        else None)

    @torch.no_grad()
    def _set_from(self, w: torch.Tensor, symmetric: bool) -> None:
        self.fill_rows(0, w, symmetric)

    @torch.no_grad()
    def fill_rows(self, start: int, w: torch.Tensor, symmetric: bool = False) -> None:
        """Quantize ``w`` into rows ``start:start + len(w)``.

        Groups never span rows, so filling a matrix a block of rows at a time gives
        bitwise the codes and scales of quantizing it whole, with temporaries the
        size of one block (:func:`forwardonly.quant.load_pretrained_quantized`).
        """
        rows = slice(start, start + w.shape[0])
        if self.float_min:
            q, s, _, lo = packing.quantize(w, self.bits, self.group_size, float_min=True,
                                           min_dtype=self.offsets.dtype)
            self.offsets[rows].copy_(lo)
        else:
            q, s, z = packing.quantize(w, self.bits, self.group_size, symmetric)
            self.zeros[rows].copy_(z)
        self.qweight[rows].copy_(q)
        self.scales[rows].copy_(s.log() if self.log_scales else s)

    def real_scales(self, rows=slice(None)) -> torch.Tensor:
        """The scales ``s`` (fp32), whatever the parametrisation."""
        s = self.scales[rows].float()
        return s.exp() if self.log_scales else s

    def _weight(self, dtype, rows=slice(None)) -> torch.Tensor:
        offsets = None if self.offsets is None else self.offsets[rows]
        zeros = None if self.zeros is None else self.zeros[rows]
        return packing.dequantize(self.qweight[rows], self.real_scales(rows), zeros, self.bits, dtype,
                                  offsets=offsets)

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        """The whole weight as a dense tensor (for tests and export)."""
        return self._weight(dtype)

    def _quant_repr(self) -> str:
        extra = ", float_min=True" if self.float_min else ", offsets=True" if self.offsets is not None else ""
        return f"bits={self.bits}, group_size={self.group_size}, log_scales={self.log_scales}{extra}"


class QuantLinear(_Quantized):
    """``nn.Linear`` with an int4/int8 group-quantized weight and trainable scales.

    Args:
        in_features, out_features: as ``nn.Linear``.
        bits: 4 (two codes per byte) or 8 (default 4).
        group_size: input features per scale; must divide ``in_features`` (default 64).
        bias: keep a bias (an ordinary parameter, not quantized) (default True).
        log_scales: the parameter holds ``log(scale)`` (default True, see module docs).
        train_scales: ``scales.requires_grad`` (default True).
        chunk_rows: dequantize at most this many output rows at a time (default 4096).
        dtype: dtype of the bias (the compute dtype is the input's).
        offsets: add a trainable fp32 offset per group, zero at first (default False; see module docs).
        float_min: with ``offsets``, start them at each group's minimum, zero points 0 (Q4_1's layout).
        offsets_dtype: dtype of the offsets (default fp32; ``torch.float16`` halves them and is exact
            for minimums read from a Q4_1 checkpoint, whose minimums are fp16; for minimums left frozen).
        act_bits: fake-quantize the input to symmetric int8 (8) or int4 (4) before the product (default
            None: the input as it comes); W4A8 is ``bits=4, act_bits=8``
            (:func:`forwardonly.quant.packing.fake_quant_activations`).
        act_scope: one activation scale per ``"token"`` (default) or per ``"tensor"``.

    Use :meth:`from_linear` (or :func:`forwardonly.quant.quantize_model`) to build one
    from a trained layer, :meth:`tie_to` to share an embedding's table. Example::

        q = QuantLinear.from_linear(nn.Linear(128, 32), bits=4, group_size=64)
        y = q(torch.randn(2, 128))
    """

    def __init__(self, in_features: int, out_features: int, bits: int = 4, group_size: int = 64,
                 bias: bool = True, log_scales: bool = True, train_scales: bool = True,
                 chunk_rows: int = 4096, dtype=None, device=None, offsets: bool = False, float_min: bool = False,
                 offsets_dtype=torch.float32, act_bits: int | None = None, act_scope: str = "token"):
        super().__init__()
        if chunk_rows < 1:
            raise ValueError(f"Invalid chunk_rows: {chunk_rows}")
        why = packing.check_activations(act_bits, act_scope)
        if why:
            raise ValueError(why)
        self.act_bits, self.act_scope = act_bits, act_scope
        self.in_features, self.out_features, self.chunk_rows = in_features, out_features, chunk_rows
        self._init_quant(out_features, in_features, bits, group_size, log_scales, train_scales, device, offsets,
                         float_min, offsets_dtype)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, group_size: int = 64, symmetric: bool = False,
                    **kwargs) -> QuantLinear:
        w = linear.weight
        q = cls(linear.in_features, linear.out_features, bits, group_size, bias=linear.bias is not None,
                dtype=w.dtype, device=w.device, **kwargs)
        q._set_from(w, symmetric)
        if linear.bias is not None:
            q.bias.data.copy_(linear.bias.data)
            q.bias.requires_grad_(linear.bias.requires_grad)
        return q

    def tie_to(self, emb: QuantEmbedding) -> QuantLinear:
        """Share ``emb``'s codes, zero points, scales and offsets parameters (a tied output layer)."""
        if (emb.num_embeddings, emb.embedding_dim) != (self.out_features, self.in_features):
            raise ValueError(f"cannot tie a {self.out_features}x{self.in_features} layer to a "
                             f"{emb.num_embeddings}x{emb.embedding_dim} embedding")
        self.bits, self.group_size, self.log_scales = emb.bits, emb.group_size, emb.log_scales
        self.float_min, self._tied = emb.float_min, True
        self.qweight, self.zeros, self.scales = emb.qweight, emb.zeros, emb.scales
        self.offsets = emb.offsets
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits:
            x = packing.fake_quant_activations(x, self.act_bits, self.act_scope)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        n, step = self.out_features, self.chunk_rows
        if n <= step:
            return F.linear(x, self._weight(x.dtype), bias)
        outs = [F.linear(x, self._weight(x.dtype, slice(r, r + step)), None if bias is None else bias[r:r + step])
                for r in range(0, n, step)]
        return torch.cat(outs, dim=-1)

    def extra_repr(self) -> str:
        act = f", act_bits={self.act_bits} per {self.act_scope}" if self.act_bits else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._quant_repr()}{act}")


class QuantEmbedding(_Quantized):
    """``nn.Embedding`` with a group-quantized table; only the looked-up rows are dequantized.

    Args mirror :class:`QuantLinear` (``group_size`` must divide ``embedding_dim``);
    ``dtype`` is the dtype of the output vectors. ``embed_scale`` reproduces
    embeddings that multiply their output by a constant (Gemma's
    ``ScaledWordEmbedding``). A tied output layer is ``QuantLinear(...).tie_to(emb)``:
    one set of codes and one ``scales`` parameter serve both.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int = 4, group_size: int = 64,
                 log_scales: bool = True, train_scales: bool = True, padding_idx: int | None = None,
                 dtype=torch.float32, device=None, embed_scale: float | None = None, offsets: bool = False,
                 float_min: bool = False, offsets_dtype=torch.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.dtype, self.embed_scale = dtype, embed_scale
        self._init_quant(num_embeddings, embedding_dim, bits, group_size, log_scales, train_scales, device, offsets,
                         float_min, offsets_dtype)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, bits: int = 4, group_size: int = 64, symmetric: bool = False,
                       **kwargs) -> QuantEmbedding:
        w = emb.weight
        scale = getattr(emb, "embed_scale", None)
        q = cls(emb.num_embeddings, emb.embedding_dim, bits, group_size, padding_idx=emb.padding_idx,
                dtype=w.dtype, device=w.device, embed_scale=None if scale is None else float(scale), **kwargs)
        q._set_from(w, symmetric)
        return q

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self._weight(self.dtype, ids)
        if self.embed_scale is not None:
            out = out * torch.tensor(self.embed_scale, dtype=self.dtype)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, dtype={self.dtype}, {self._quant_repr()}"
