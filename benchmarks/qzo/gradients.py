"""Where the sentiment loss's gradient lives in the int4 model: squared norms by kind of parameter.

    PYTHONPATH=src python benchmarks/qzo/gradients.py      # -> a new results/gradients_int4.<UTC time>.json

One backward pass (an analysis, not a training method) through the int4 SmolLM2-135M (group 64, log-scales)
on the first ``--examples`` training sentences, with every floating-point parameter (the scales and the
RMSNorm weights) requiring gradients. It reports, per kind of tensor (``q_proj.scales`` of all layers
together, ...), the number of entries and the squared gradient norm, and the share of the embedding scales'
squared norm that sits in the label words' rows. A two-sided ZO estimate's projected gradient has variance
~ the squared norm over all perturbed entries, so a kind with a large share sets the noise that every other
kind's update carries.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--out", help="result record, which must not exist (default: a new "
                                   "results/gradients_int4.<UTC time>.json)")
    args = ap.parse_args()

    from forwardonly.bench.record import make_record, new_record_path, refuse_existing, write_record

    refuse_existing(args.out)
    from forwardonly.quant import load_pretrained_quantized
    from forwardonly.tasks import get_task, make_objective

    torch.set_num_threads(1)
    task = get_task("sentiment")
    model, tok = load_pretrained_quantized("smollm2-135m", bits=4, group_size=args.group_size)
    for p in model.parameters():
        p.requires_grad_(p.is_floating_point())
    obj = make_objective(task, tok, "ce")
    batch = obj.batch(task.splits["train"][: args.examples], "cpu")
    loss = obj.loss(model, batch)
    loss.backward()

    sq: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        parts = name.split(".")
        kind = ".".join(parts[-2:]) if "layers" in parts else name  # one row for a kind across layers
        sq[kind] += float(p.grad.double().pow(2).sum())
        count[kind] += p.numel()
    total = sum(sq.values())
    kinds = [{"kind": k, "entries": count[k], "grad_sq": v, "share": v / total}
             for k, v in sorted(sq.items(), key=lambda kv: -kv[1])]
    emb = model.model.embed_tokens.scales.grad.double().pow(2).sum(1)
    label_ids = [int(i) for i in obj.label_ids]
    results = {"loss": loss.item(), "grad_sq_total": total, "kinds": kinds,
               "scales_grad_sq": sum(v for k, v in sq.items() if k.endswith("scales")),
               "embedding_scales": {"grad_sq": float(emb.sum()), "label_ids": label_ids,
                                    "label_words": [tok.decode([i]) for i in label_ids],
                                    "label_rows_grad_sq": float(emb[label_ids].sum()),
                                    "label_rows_entries": len(label_ids) * model.model.embed_tokens.scales.shape[1]}}
    for k in kinds:
        print(f"{k['kind']:36s} {k['entries']:>9,d} entries  |grad|^2 {k['grad_sq']:9.4f}  share {k['share']:.3f}")
    e = results["embedding_scales"]
    print(f"label rows {e['label_words']}: {e['label_rows_grad_sq']:.4f} of the embedding scales' {e['grad_sq']:.4f}")
    config = {"model": "smollm2-135m", "bits": 4, "group_size": args.group_size, "examples": args.examples,
              "task": "sentiment", "objective": "ce"}
    out = args.out or new_record_path(Path(__file__).resolve().parent / "results", "gradients_int4")
    write_record(out, make_record("qzo-gradients-int4", config, results))


if __name__ == "__main__":
    from forwardonly.errors import script_main

    sys.exit(script_main(main))
