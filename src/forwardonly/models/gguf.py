"""GGUF files: dequantize once, keep an fp32 safetensors copy.

transformers can read a GGUF file (it dequantizes every tensor, ~20 s for
SmolLM2-135M on two CPU cores), but refuses to ``save_pretrained`` a model it
loaded that way. So we rebuild a fresh model from the same config, copy the
state dict in, and save that, with the tokenizer, as an ordinary Hugging Face
directory. Later loads read safetensors and take about a second.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..io import atomic_path, cache_root

MANIFEST = "forwardonly.json"
"""The file that marks a finished model directory in the cache."""


def export_gguf(gguf: str | Path, out_dir: str | Path) -> None:
    """Write GGUF file ``gguf`` as an fp32 Hugging Face directory at ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf = Path(gguf)
    out_dir = Path(out_dir)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # noqa: BLE001 - the GGUF reader fails on a corrupt file with many error types
        from ..errors import UserError

        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{gguf}: not a readable GGUF file ({first})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    config = loaded.config
    config.dtype = torch.float32
    if hasattr(config, "quantization_config"):  # the weights written are plain fp32: no GGUF reader needed
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings show up as "missing" on some architectures; anything else is a bug.
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF export of {gguf}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def _fingerprint(path: Path) -> str:
    # Size, mtime and the first MiB: enough to notice a different file without hashing 100s of MB.
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{int(st.st_mtime)}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def cached_gguf_dir(gguf: str | Path) -> Path:
    """The fp32 directory for an arbitrary GGUF file, converting it on first use."""

    gguf = Path(gguf).resolve()
    dest = cache_root() / "gguf" / f"{gguf.stem}-{_fingerprint(gguf)}"
    if not (dest / MANIFEST).is_file():
        with atomic_path(dest) as tmp:
            export_gguf(gguf, tmp)
            (tmp / MANIFEST).write_text(f'{{"source": "{gguf.name}", "kind": "causal"}}\n')
    return dest
