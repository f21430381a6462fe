"""A run's standard outputs: ``final/`` and ``forwardonly export``, both written by ``save_pretrained``.

Every ``forwardonly train`` run with an ``out_dir`` ends by writing ``final/``:

* adapter schemes (``lora``, ``prefix``, ``prompt``): the PEFT adapter directory
  (``adapter_config.json``, ``adapter_model.safetensors``) and the tokenizer; load it with
  ``PeftModel.from_pretrained(base_model, "RUN/final")``;
* the other schemes (``full``, ``head``, ``bitfit``, ``scales``): the whole model and its tokenizer;
  load it with ``AutoModelForCausalLM.from_pretrained("RUN/final")`` (or
  ``AutoModelForSequenceClassification`` for a classifier run). A streamed run's weights are read from
  its store; a quantized run's layers are written dequantized (the trained scales applied), in
  ``model.dtype``.

:func:`export_run` (``forwardonly export --run RUN out_dir=DIR [--merge]``) writes the same from
a run's checkpoint, and with ``merge`` folds LoRA adapters into the base weights
(``merge_and_unload``) so the result loads without PEFT.

Example::

    from forwardonly.lm.export import export_run
    export_run("runs/sentiment-zo-lora", "exported/merged", merge=True)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import UserError
from ..io import atomic_path

ADAPTER_SCHEMES = ("lora", "prefix", "prompt")
MERGEABLE = ("lora",)

log = logging.getLogger("forwardonly.export")


def save_final(model, tokenizer, dest, state_dict: dict | None = None) -> Path:
    """Write ``model`` (a PEFT model writes its adapter only) and ``tokenizer`` to ``dest`` atomically.

    ``state_dict``: the weights under standard names when the model does not hold them itself
    (:meth:`forwardonly.lm.holders.Holder.standard_state`: a streamed model's, read from its store; a
    quantized model's, dequantized), so that every run's ``final/`` loads with ``from_pretrained``."""
    from transformers.utils import logging as hf_logging

    dest = Path(dest)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per run says nothing
    try:
        with atomic_path(dest) as tmp:
            model.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return dest


def _run_config(run_dir: Path):
    from ..config import load_config
    from .config import TrainConfig

    path = run_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.json)")
    try:
        base = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a run config ({e})") from None
    return load_config(TrainConfig, None, None, base=base)


def export_run(run_dir, out, merge: bool = False) -> Path:
    """Rebuild a run's trained model from its checkpoint and write it to ``out`` with ``save_pretrained``.

    Args:
        run_dir: the run's ``out_dir`` (``config.json`` and ``checkpoint/``).
        out: a directory that does not exist yet (nothing is overwritten).
        merge: fold LoRA adapters into the base weights and write the whole model
            (``merge_and_unload``); other schemes need no merge.
    """
    from .. import checkpoint
    from .holders import Holder
    from .setup import setup

    run_dir, out = Path(run_dir), Path(out)
    cfg = _run_config(run_dir)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out (nothing was overwritten)")
    if merge and cfg.scheme.name not in MERGEABLE:
        hint = ("its weights are the model's own" if cfg.scheme.name not in ADAPTER_SCHEMES
                else "its virtual tokens have no base weights to merge into")
        raise UserError(f"--merge: the run's scheme is {cfg.scheme.name!r}: {hint}; export without --merge")
    holder = Holder(cfg.model, None, cfg.device)
    model, tok, _, _, _ = setup(cfg, log.info, holder)
    holder.attach(model)
    try:
        checkpoint.load_trainable(run_dir / "checkpoint", model, write=holder.load_trainable)
        if merge:
            model = model.merge_and_unload()
        return save_final(model, tok, out, state_dict=holder.standard_state(model))
    finally:
        holder.detach()
