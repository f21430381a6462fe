"""How a run holds its model: quantized, streamed from a slower tier, or in mixed precision.

Configuration (``model.quant``, ``model.offload``, ``model.precision`` in a training config) picks a
:class:`Holder`, a small object with a reversible lifecycle that every entry point applies the same way
(``forwardonly train``, ``forwardonly eval``, the seed-log replay, :class:`forwardonly.hf.ZOTrainer`):

* :meth:`Holder.load` builds the model: plainly (:func:`forwardonly.models.load_model`), straight into
  quantized layers (:func:`forwardonly.quant.load_pretrained_quantized`: the floating-point model is
  never built), or as a weightless skeleton whose blocks live in a :class:`~forwardonly.offload.WeightStore`;
* :meth:`Holder.attach` starts what runs around the forward: :class:`~forwardonly.quant.mixed.MixedPrecision`,
  or block streaming (:class:`~forwardonly.offload.StreamedZO` when an optimizer is given, a plain
  :class:`~forwardonly.offload.BlockStreamer` for evaluation);
* :meth:`Holder.trainable_state` / :meth:`Holder.load_trainable` read and write the trainable weights
  wherever they live (a streamed block's weights are in the store, not in the parameters);
* :meth:`Holder.detach` undoes :meth:`attach`.

From Python (e.g. with :class:`forwardonly.hf.ZOTrainer`, which takes ``holder=``)::

    holder = Holder(name="smollm2-135m", quant=QuantConfig(bits=4, group_size=64))
    model, tok = holder.load()

Example (what ``forwardonly train`` does)::

    holder = Holder(cfg.model, out_dir)
    model, tok = holder.load(num_labels=2)
    ...                                  # scheme, optimizer
    holder.attach(model, optimizer)      # streaming / mixed precision from here on
    ...                                  # optimizer.step(closure), evaluation
    holder.detach()
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from ..errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Holder:
    """The model's holder for one run (see the module docstring).

    Args:
        model_cfg: the run's ``model`` section (:class:`forwardonly.lm.config.ModelConfig`).
        out_dir: the run's output directory (the default home of the disk tier's working copy).
        device: the run's device.
    """

    def __init__(self, model_cfg=None, out_dir: str | Path | None = None, device: str = "cpu", **fields):
        if model_cfg is None or fields:  # Holder(name="smollm2-135m", quant=QuantConfig(bits=4)) for Python users
            from .config import ModelConfig

            model_cfg = ModelConfig(**{**(dataclasses.asdict(model_cfg) if model_cfg else {}), **fields})
        self.cfg, self.out_dir, self.device = model_cfg, out_dir, device
        self.store = None
        self.streamer = None  # a BlockStreamer or StreamedZO while attached
        self.mixed = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def streamed(self) -> bool:
        return self.cfg.offload is not None

    # ------------------------------------------------------------------ load
    def load(self, *, num_labels: int = 2, attn_implementation: str | None = None):
        """``(model, tokenizer)`` held as configured."""
        cfg = self.cfg
        dtype = DTYPES[cfg.dtype]
        if cfg.quant is not None and cfg.quant.shadow:  # ZeroQAT: fp shadow weights, fake-quantized in the forward
            from ..models import load_model
            from ..quant import fake_quantize_model

            model, tok = load_model(cfg.name, dtype=dtype, device=self.device, kind="causal",
                                    attn_implementation=attn_implementation)
            return fake_quantize_model(model, cfg.quant), tok
        if cfg.quant is not None:
            from ..quant import load_pretrained_quantized

            return load_pretrained_quantized(cfg.name, cfg.quant, dtype=dtype)
        if cfg.offload is not None:
            return self._skeleton(num_labels, attn_implementation)
        from ..models import load_model
        from ..models.pooling import apply_pooling
        from ..models.truncate import keep_first_layers

        model, tok = load_model(cfg.name, dtype=dtype, device=self.device, kind=cfg.kind, num_labels=num_labels,
                                attn_implementation=attn_implementation)
        return apply_pooling(keep_first_layers(model, cfg.layers), cfg.pooling), tok

    def _skeleton(self, num_labels: int, attn_implementation: str | None):
        """A weightless causal LM over the weights file of ``model.name``, and its tokenizer."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from ..models.loading import prepare_tokenizer, resolve
        from ..offload import WeightStore, empty_model

        where, _ = resolve(self.cfg.name)
        where = Path(where)
        weights = where / "model.safetensors"
        if not weights.is_file():
            raise UserError(f"model.offload streams one safetensors file; {weights} does not exist "
                            f"(sharded checkpoints are not supported yet)")
        config = AutoConfig.from_pretrained(where)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        model = empty_model(lambda: AutoModelForCausalLM.from_config(config)).eval()
        tok = prepare_tokenizer(AutoTokenizer.from_pretrained(where), model)
        workdir = self.cfg.offload.workdir or (Path(self.out_dir) / "offload" if self.out_dir else None)
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="forwardonly-offload-")
            workdir = self._tmp.name
        self.store = WeightStore(weights, workdir=workdir, tier=self.cfg.offload.tier)
        return model, tok

    # -------------------------------------------------------------- lifecycle
    def attach(self, model, optimizer=None) -> Holder:
        """Start what runs around the forward (streaming, mixed precision); ``optimizer``: a ZO optimizer
        whose steps stream the model (without one, the model only evaluates)."""
        if self.cfg.precision == "mixed":
            from ..quant.mixed import MixedPrecision

            self.mixed = MixedPrecision(model, compute=torch.float32).attach()
        if self.store is not None:
            from ..offload import BlockStreamer, StreamedZO

            off = self.cfg.offload
            device = off.device or self.device
            if optimizer is not None:
                self.streamer = StreamedZO(model, optimizer, self.store, device=device, prefetch=off.prefetch)
            else:
                self.streamer = BlockStreamer(model, self.store, device=device, prefetch=off.prefetch).attach()
        return self

    def flush(self) -> None:
        """Write whatever a streamed step left pending (before reading or saving weights)."""
        if self.streamer is not None and hasattr(self.streamer, "flush"):
            self.streamer.flush()

    def detach(self) -> None:
        if self.streamer is not None:
            if hasattr(self.streamer, "close"):
                self.streamer.close(materialize=False)
            else:
                self.streamer.detach(materialize=False)
            self.streamer = None
        if self.mixed is not None:
            self.mixed.detach()
            self.mixed = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ---------------------------------------------------------------- weights
    def _streamed_names(self, model) -> dict[str, str]:
        """Parameter name -> store name for the streamed blocks' parameters."""
        streamer = getattr(self.streamer, "streamer", self.streamer)
        ids = {id(p): name for b in streamer.blocks for name, p in b.params}
        return {n: ids[id(p)] for n, p in model.named_parameters() if id(p) in ids}

    def all_weights(self, model) -> dict[str, torch.Tensor]:
        """Every parameter by name (tied ones once), read from wherever it lives."""
        self.flush()
        out = {n: p.detach() for n, p in model.named_parameters()}
        if self.streamer is not None:
            getattr(self.streamer, "streamer", self.streamer).sync()
            out.update({name: self.store.tensor(store_name) for name, store_name in self._streamed_names(model).items()})
        return out

    def standard_state(self, model) -> dict[str, torch.Tensor] | None:
        """The model's weights under the standard names a plain Hugging Face model of its config loads
        (``save_pretrained(state_dict=...)``), or None when the model holds them itself: a streamed
        model's are read from the store, a quantized model's layers are dequantized (in ``model.dtype``)."""
        if self.cfg.quant is None and self.streamer is None:
            return None
        out = {n: b for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] not in ("qweight", "zeros")}
        if self.cfg.quant is None:
            out.update(self.all_weights(model))
            return out
        from ..quant import FakeQuantEmbedding, FakeQuantLinear, QuantEmbedding, QuantLinear

        dtype = DTYPES[self.cfg.dtype]
        quantized = {}
        for name, m in model.named_modules():  # a shadow-weight model is written as its forward sees it
            if isinstance(m, (QuantLinear, QuantEmbedding, FakeQuantLinear, FakeQuantEmbedding)):
                quantized[name] = m
                if not getattr(m, "_tied", False):  # a tied head is the embedding again (the config ties them)
                    out[f"{name}.weight"] = m.dequantized(dtype)
        for name, p in model.named_parameters():
            owner = name.rsplit(".", 1)[0]
            if owner not in quantized or name.endswith(".bias"):
                out[name] = p.detach()
        return out

    def trainable_state(self, model) -> dict[str, torch.Tensor]:
        """The trainable weights by parameter name, read from wherever they live."""
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        return {n: t for n, t in self.all_weights(model).items() if n in trainable}

    def load_trainable(self, model, saved: dict[str, torch.Tensor], source: str) -> None:
        """Write ``saved`` (by parameter name) into the model's trainable weights, wherever they live."""
        from ..checkpoint import copy_into

        streamed = self._streamed_names(model) if self.streamer is not None else {}
        copy_into(model, saved, source,
                  target=lambda name, p: self.store.tensor(streamed[name]) if name in streamed else p)
