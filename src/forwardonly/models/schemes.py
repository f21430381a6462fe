"""Fine-tuning schemes: which parameters a zeroth-order optimizer may change.

Every scheme leaves ``requires_grad=True`` on exactly the trainable
parameters and ``False`` on all others; optimizers take
:func:`trainable_parameters` and never touch the rest, so frozen weights stay
bitwise unchanged (``tests/models/test_schemes.py`` asserts it per scheme).

=========  =====================================================================
full       every parameter
lora       LoRA adapters through PEFT (Hu et al., 2021); options ``r``, ``alpha``,
           ``dropout``, ``target_modules`` (default: PEFT's per-architecture choice)
prefix     prefix tuning through PEFT (Li & Liang, 2021); ``num_virtual_tokens``
prompt     prompt tuning through PEFT (Lester et al., 2021); ``num_virtual_tokens``
head       the output layer only (``lm_head`` or the classifier). A head tied to
           the input embeddings is untied first, so training it leaves the
           embeddings alone.
bitfit     bias terms only (Ben Zaken et al., 2022); ``norm=True`` adds the
           normalisation weights, needed for bias-free models such as Llama.
scales     the quantization scales of a quantized model (QZO, Shang et al., 2025:
           :mod:`forwardonly.quant`), nothing else.
lora_svd   LoRA adapters in SVD form, only their ``r`` singular values trained
           (ESSA; :mod:`forwardonly.models.lowdim`); LoRA's options
label_bias one bias per label word's logit (:mod:`forwardonly.models.lowdim`); the
           training run attaches it once the task's label words are known
=========  =====================================================================

Every scheme also takes ``freeze``: ``fnmatch`` patterns of parameter names kept
frozen whatever the scheme says (e.g. ``["model.embed_tokens.*"]``).

Example::

    model = apply_scheme(model, "lora", r=8)
    params = [p for _, p in trainable_parameters(model)]
"""

from __future__ import annotations

import warnings

from ..errors import UserError

SCHEMES = ("full", "lora", "lora_svd", "prefix", "prompt", "head", "bitfit", "scales", "label_bias")

_OPTIONS = {
    "full": set(),
    "lora": {"r", "alpha", "dropout", "target_modules"},
    "lora_svd": {"r", "alpha", "dropout", "target_modules"},
    "prefix": {"num_virtual_tokens"},
    "prompt": {"num_virtual_tokens", "init_text"},
    "head": set(),
    "bitfit": {"norm"},
    "scales": set(),
    "label_bias": set(),
}


def trainable_parameters(model) -> list[tuple[str, object]]:
    """``(name, parameter)`` for every parameter with ``requires_grad``, in module order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _is_classifier(model) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def _head_modules(model):
    if _is_classifier(model):
        names = [n for n in ("classifier", "score") if hasattr(model, n)]
        if names:
            return [(n, getattr(model, n)) for n in names]
    head = model.get_output_embeddings()
    if head is None:
        raise UserError(f"{type(model).__name__} has no output layer to train with scheme 'head'")
    return [("lm_head", head)]


def _untie_head(model) -> None:
    import torch

    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        head.weight = torch.nn.Parameter(emb.weight.detach().clone())
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False


def _peft(model, scheme: str, opts: dict):
    from ..errors import require

    peft = require("peft", f"scheme {scheme!r}")

    classifier = _is_classifier(model)
    task_type = peft.TaskType.SEQ_CLS if classifier else peft.TaskType.CAUSAL_LM
    if scheme == "lora":
        r = int(opts.get("r", 8))
        if r < 1:
            raise UserError(f"lora r={r} must be at least 1")
        cfg = peft.LoraConfig(task_type=task_type, r=r, lora_alpha=float(opts.get("alpha", 2 * r)),
                              lora_dropout=float(opts.get("dropout", 0.0)),
                              target_modules=opts.get("target_modules"))
    else:
        n = int(opts.get("num_virtual_tokens", 10))
        if n < 1:
            raise UserError(f"{scheme} num_virtual_tokens={n} must be at least 1")
        if scheme == "prefix":
            cfg = peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=n)
        else:
            cfg = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=n)
    try:
        with warnings.catch_warnings():
            # Noise from PEFT/transformers internals (deprecations, GPT-2's Conv1D layout), not the user's.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
            wrapped = peft.get_peft_model(model, cfg)
    except ValueError as e:
        raise UserError(f"scheme {scheme!r} does not apply to {type(model).__name__}: {e}") from None
    return wrapped


def apply_scheme(model, scheme: str, **opts):
    """Mark the trainable parameters of ``model`` for ``scheme`` and return the model.

    PEFT schemes (``lora``, ``prefix``, ``prompt``) return a ``PeftModel``
    wrapping ``model``; the others return ``model`` itself. Unknown schemes and
    options raise :class:`~forwardonly.errors.UserError`.
    """
    if scheme not in SCHEMES:
        raise UserError(f"unknown fine-tuning scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
    opts = {k: v for k, v in opts.items() if v is not None}
    freeze = opts.pop("freeze", None)
    model = _apply(model, scheme, opts)
    if freeze:
        import fnmatch

        hit = [n for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in freeze)]
        if not hit:
            raise UserError(f"scheme.freeze={list(freeze)} matches no parameter of {type(model).__name__}")
        for n, p in model.named_parameters():
            if n in hit:
                p.requires_grad_(False)
        if not trainable_parameters(model):
            raise UserError(f"scheme.freeze={list(freeze)} leaves nothing to train")
    return model


def _apply(model, scheme: str, opts: dict):
    unknown = set(opts) - _OPTIONS[scheme]
    if unknown:
        valid = ", ".join(sorted(_OPTIONS[scheme])) or "none"
        raise UserError(f"unknown option(s) {', '.join(sorted(unknown))} for scheme {scheme!r}; valid: {valid}")
    if scheme in ("lora", "prefix", "prompt"):
        return _peft(model, scheme, opts)
    if scheme == "lora_svd":
        from .lowdim import to_svd_form

        wrapped = _peft(model, "lora", opts)
        to_svd_form(wrapped)
        return wrapped
    if scheme == "label_bias":  # the bias itself comes with the task (lowdim.attach_label_bias)
        for p in model.parameters():
            p.requires_grad_(False)
        return model
    if scheme == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if scheme == "scales":
        from ..quant import scale_parameters

        for p in model.parameters():
            p.requires_grad_(False)
        params = scale_parameters(model)
        if not params:
            raise UserError(f"scheme 'scales' needs a quantized model ({type(model).__name__} has no quantization "
                            f"scales): set model.quant")
        for p in params:
            p.requires_grad_(True)
        return model
    if scheme == "head" and not _is_classifier(model):
        _untie_head(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if scheme == "head":
        for _, module in _head_modules(model):
            for p in module.parameters():
                p.requires_grad_(True)
    else:  # bitfit
        norm = bool(opts.get("norm", False))
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            owner = name.rsplit(".", 2)[-2] if name.count(".") else ""
            is_norm = "norm" in owner.lower() or owner.startswith("ln_")
            if leaf == "bias" or (norm and is_norm and leaf == "weight"):
                p.requires_grad_(True)
        if not trainable_parameters(model):
            raise UserError(f"{type(model).__name__} has no bias parameters for scheme 'bitfit'; "
                            f"use bitfit with norm=true (also trains normalisation weights), or lora")
    if _is_classifier(model) and scheme == "bitfit":
        # A freshly initialised classification head must learn too, or the task is hopeless.
        for _, module in _head_modules(model):
            for p in module.parameters():
                p.requires_grad_(True)
    return model
