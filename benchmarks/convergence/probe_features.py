"""Setup E's floor by feature: a linear probe of all-MiniLM-L6 on three sentence features, validation only.

    PYTHONPATH=src nice -n 15 python benchmarks/convergence/probe_features.py      # one new record

Setup E starts from a linear-probe head (``model.head_init: linear_probe``), fitted on the input of the
classifier's last linear layer: for a BERT classifier that is the pooler's output, ``tanh(W h_CLS + b)``.
all-MiniLM-L6 was trained as a sentence encoder with *mean* pooling, so its pooler (and its [CLS] state) may
carry little of a sentence's meaning, and ZO starts from a near-chance head. This measures that, with
forward passes only: the features of every training and validation sentence (``pooler``, ``cls``: the
[CLS] state, ``mean``: the mask-weighted mean of the last hidden states) are computed once; then per
``k`` (sentences per class, MeZO's protocol, :func:`forwardonly.tasks.per_class`) and seed the head is
fitted as ``head_init`` fits it (:func:`forwardonly.models.head_init.fit_logistic`, ``C = 1``) and scored
on the 200 validation sentences. The test split is never read. One record,
``results/E/probe_features.<UTC time>.json``, pins the code and the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "E"


def features(model, tok, examples: list[dict], max_length: int, batch_size: int = 32) -> dict:
    """``{"pooler" | "cls" | "mean": (n, hidden)}`` of ``examples``' prompts, and their targets."""
    import torch

    out: dict[str, list] = {"pooler": [], "cls": [], "mean": []}
    for i in range(0, len(examples), batch_size):
        enc = tok([ex["prompt"] for ex in examples[i:i + batch_size]], padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            o = model.base_model(**enc)
        h, m = o.last_hidden_state, enc["attention_mask"].unsqueeze(-1).to(o.last_hidden_state.dtype)
        out["pooler"].append(o.pooler_output)
        out["cls"].append(h[:, 0])
        out["mean"].append((h * m).sum(1) / m.sum(1))
    targets = torch.tensor([int(ex["target"]) for ex in examples])
    return {k: torch.cat(v).double() for k, v in out.items()}, targets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shots", default="16,473", help="sentences per class (default 16,473)")
    ap.add_argument("--seeds", default="0,1,2", help="draws per k (default 0,1,2)")
    args = ap.parse_args(argv)

    import torch

    from forwardonly.bench.record import make_record, new_record_path, write_record
    from forwardonly.config import load_config, to_dict
    from forwardonly.lm.config import TrainConfig
    from forwardonly.lm.setup import setup
    from forwardonly.models.head_init import fit_logistic
    from forwardonly.tasks import per_class

    torch.set_num_threads(1)
    cfg = load_config(TrainConfig, None, ["model.name=minilm-l6", "model.kind=classifier", "task.name=sentiment",
                                          "task.max_length=64", "steps=0", "test=false", "validate=true"])
    model, tok, task, _, _ = setup(cfg)
    model.eval()
    train, val = task.splits[cfg.task.train_split], task.splits[cfg.task.eval_split]
    x_train, y_train = features(model, tok, train, cfg.task.max_length)
    x_val, y_val = features(model, tok, val, cfg.task.max_length)
    index = {id(ex): i for i, ex in enumerate(train)}
    rows = []
    for k in (int(s) for s in args.shots.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows_k = torch.tensor([index[id(ex)] for ex in per_class(train, k, seed)])
            row = {"k": k, "seed": seed}
            for name in x_train:
                w, b = fit_logistic(x_train[name][rows_k], y_train[rows_k], 2)
                row[f"{name}_train"] = float(((x_train[name][rows_k] @ w.T + b).argmax(1) == y_train[rows_k])
                                             .double().mean())
                row[f"{name}_validation"] = float(((x_val[name] @ w.T + b).argmax(1) == y_val).double().mean())
            rows.append(row)
            print(row, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rec = make_record("convergence-probe-features", to_dict(cfg), {"rows": rows, "validation_n": len(val)})
    print(write_record(new_record_path(RESULTS, "probe_features"), rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
