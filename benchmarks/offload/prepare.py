"""Write the offload suite's model: a Llama with TinyLlama-1.1B's shape at random init, as a model directory.

    PYTHONPATH=src python benchmarks/offload/prepare.py            # ~1 min; 4.7 GB under --scratch

The directory (default ``/tmp/forwardonly-offload-bench/tinyllama-1.1b-random``, outside the repository) holds
``config.json``, ``model.safetensors`` (fp32, N(0, 0.02) weights and unit norms from seeded generators, written
tensor by tensor) and SmolLM2-135M's tokenizer, so that ``forwardonly train`` can run the shipped tasks on it.
The shape is TinyLlama-1.1B's (hidden 2048, intermediate 5632, 22 layers, 32 heads, 4 kv heads, untied head)
with SmolLM2's vocabulary of 49,152 tokens (TinyLlama's own is 32,000): 1.17e9 parameters.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
from pathlib import Path

SHAPE = {"vocab_size": 49152, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
         "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
         "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
DEFAULT = Path("/tmp/forwardonly-offload-bench/tinyllama-1.1b-random")


def write_weights(path: Path, names_shapes, seed: int = 0) -> int:
    """Random-init fp32 weights as safetensors, generated and written tensor by tensor (atomically)."""
    import torch

    from forwardonly.io import atomic_path

    header, off = {}, 0
    for name, shape in names_shapes:
        n = 4 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    chunk = 1 << 24
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for k, (name, shape) in enumerate(names_shapes):
            gen = torch.Generator().manual_seed(seed * 1000 + k)
            numel = int(torch.Size(shape).numel())
            for s in range(0, numel, chunk):
                n = min(chunk, numel - s)
                t = torch.ones(n) if name.endswith("norm.weight") else torch.empty(n).normal_(0, 0.02, generator=gen)
                f.write(t.numpy().tobytes())
    return off


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT), help=f"the model directory (default {DEFAULT})")
    args = ap.parse_args(argv)
    from transformers import LlamaConfig, LlamaForCausalLM

    from forwardonly.models.loading import resolve
    from forwardonly.offload import empty_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**SHAPE)
    skeleton = empty_model(lambda: LlamaForCausalLM(config))
    weights = out / "model.safetensors"
    if not weights.is_file():
        n = write_weights(weights, [(name, tuple(p.shape)) for name, p in skeleton.named_parameters()])
        print(f"wrote {weights}: {n / 2**30:.2f} GiB")
    config.save_pretrained(out)
    tok_dir = Path(resolve("smollm2-135m")[0])
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name in ("vocab.json", "merges.txt"):
            shutil.copy2(f, out / f.name)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
