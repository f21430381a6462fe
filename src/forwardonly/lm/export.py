"""A run's standard outputs: ``final/`` and ``forwardonly export``, both written by ``save_pretrained``.

Every ``forwardonly train`` run with an ``out_dir`` ends by writing ``final/``:

* adapter schemes (``lora``, ``prefix``, ``prompt``): the PEFT adapter directory
  (``adapter_config.json``, ``adapter_model.safetensors``) and the tokenizer; load it with
  ``PeftModel.from_pretrained(base_model, "RUN/final")``;
* the other schemes (``full``, ``head``, ``bitfit``): the whole model and its tokenizer; load
  it with ``AutoModelForCausalLM.from_pretrained("RUN/final")`` (or
  ``AutoModelForSequenceClassification`` for a classifier run).

:func:`export_run` (``forwardonly export --run RUN --out DIR [--merge]``) writes the same from
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


def unsupported_layout(model_cfg) -> str | None:
    """Why a run's model cannot be written with ``save_pretrained`` as a standard directory, or None.

    Quantized (``model.quant``: forwardonly's own integer layers) and streamed (``model.offload``: the
    weights live in the run's weight store, not in the model) runs keep their trained weights in
    ``checkpoint/`` only.
    """
    if model_cfg.quant is not None:
        return "model.quant runs hold forwardonly's own quantized layers, which no Hugging Face class loads"
    if model_cfg.offload is not None:
        return "model.offload runs keep the weights in their weight store, not in the model"
    return None


def save_final(model, tokenizer, dest) -> Path:
    """Write ``model`` (a PEFT model writes its adapter only) and ``tokenizer`` to ``dest`` atomically."""
    from transformers.utils import logging as hf_logging

    dest = Path(dest)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per run says nothing
    try:
        with atomic_path(dest) as tmp:
            model.save_pretrained(tmp)
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
    from .train import setup

    run_dir, out = Path(run_dir), Path(out)
    cfg = _run_config(run_dir)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out (nothing was overwritten)")
    why_not = unsupported_layout(cfg.model)
    if why_not is not None:
        raise UserError(f"{run_dir}: cannot export: {why_not}")
    if merge and cfg.scheme.name not in MERGEABLE:
        hint = ("its weights are the model's own" if cfg.scheme.name not in ADAPTER_SCHEMES
                else "its virtual tokens have no base weights to merge into")
        raise UserError(f"--merge: the run's scheme is {cfg.scheme.name!r}: {hint}; export without --merge")
    model, tok, _, _, _ = setup(cfg, log.info)
    checkpoint.load_trainable(run_dir / "checkpoint", model)
    if merge:
        model = model.merge_and_unload()
    return save_final(model, tok, out)
