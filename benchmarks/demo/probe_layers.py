"""How far a linear head on SmolLM2-135M's hidden states gets on the demo's task, per layer, validation only.

    PYTHONPATH=src python benchmarks/demo/probe_layers.py          # one new record in results/

The demo reads sentiment off the language-model head's two label logits (78 % zero-shot). A sequence
classifier would instead read it with a new linear head, fitted before any zeroth-order step by a logistic
regression on the training sentences' features (``model.head_init: linear_probe``, forward passes only). This
measures what such a head can reach, and at which depth: the demo's prompts of every training and
validation sentence go through the model once; per layer (0 = the embeddings, 30 = the last, after the
final norm) three features are kept, the last token's hidden state (what a causal classifier's head reads),
the mask-weighted mean over the tokens, and ``normed``: the last token's state through the model's final
norm, what the head of a classifier cut to its first L blocks reads (``model.layers: L``,
:mod:`forwardonly.models.truncate`; on the last layer the same as ``last``). Per feature, layer, training size (``--shots`` sentences per class
drawn with :func:`forwardonly.tasks.per_class`, and ``all`` = the 1,200 training sentences) and L2 weight,
a logistic regression (:func:`forwardonly.models.head_init.fit_logistic`, on features standardised with the
training rows' mean and deviation) is fitted and scored on the 200 validation sentences. The test split is
never read. One record, ``results/probe_layers.<UTC time>.json``, pins the code and the command, with the
forward time per batch (a head on layer L needs only the first L layers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def layer_features(model, tok, examples: list[dict], max_length: int, batch_size: int):
    """``(last, mean, normed)``, each ``(layers + 1, n, hidden)`` float32, and the seconds each batch's forward
    took (``normed``: ``last`` through the final norm, which the model's last layer has had already)."""
    import torch

    last, mean, normed, seconds = [], [], [], []
    for i in range(0, len(examples), batch_size):
        enc = tok([ex["prompt"] for ex in examples[i:i + batch_size]], padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt")
        t0 = time.perf_counter()
        with torch.no_grad():
            hs = model.model(**enc, output_hidden_states=True).hidden_states
        seconds.append(time.perf_counter() - t0)
        h = torch.stack(hs).float()                               # (layers + 1, b, t, d)
        m = enc["attention_mask"].to(h.dtype)                     # (b, t)
        pos = m.shape[1] - 1 - m.flip(1).argmax(1)                # the last real token, either padding side
        last.append(h[:, torch.arange(h.shape[1]), pos])
        mean.append((h * m[None, :, :, None]).sum(2) / m.sum(1)[None, :, None])
        with torch.no_grad():
            normed.append(torch.cat([model.model.norm(last[-1][:-1]), last[-1][-1:]]).float())
    return torch.cat(last, 1), torch.cat(mean, 1), torch.cat(normed, 1), seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shots", default="all", help="sentences per class, or all (default all: the 1,200 training sentences)")
    ap.add_argument("--seeds", default="0,1,2", help="draws per k (default 0,1,2; one for all)")
    ap.add_argument("--l2", default="0.1,1,10,100,300,1000",
                    help="L2 weights tried (default 0.1,1,10,100,300,1000)")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    parsed = {}
    for flag, value, kind in (("--shots", args.shots, lambda s: s if s == "all" else int(s)),
                              ("--seeds", args.seeds, int), ("--l2", args.l2, float)):
        try:
            parsed[flag] = [kind(s) for s in value.split(",")]
        except ValueError:
            print(f"probe_layers.py: {flag} {value!r}: not a comma-separated list of numbers", file=sys.stderr)
            return 2
    shots, seeds, l2s = parsed["--shots"], parsed["--seeds"], parsed["--l2"]

    import torch

    from forwardonly.bench.record import make_record, new_record_path, write_record
    from forwardonly.config import load_config, to_dict
    from forwardonly.lm.config import TrainConfig
    from forwardonly.lm.setup import setup
    from forwardonly.models.head_init import fit_logistic
    from forwardonly.tasks import per_class

    cfg = load_config(TrainConfig, None, ["model.name=smollm2-135m", "task.name=sentiment", "task.max_length=96",
                                          "steps=0", "test=false", "validate=true"])
    model, tok, task, _, _ = setup(cfg)
    model.eval()
    train, val = task.splits[cfg.task.train_split], task.splits[cfg.task.eval_split]
    t0 = time.perf_counter()
    tr_last, tr_mean, tr_normed, secs = layer_features(model, tok, train, cfg.task.max_length, args.batch_size)
    va_last, va_mean, va_normed, _ = layer_features(model, tok, val, cfg.task.max_length, args.batch_size)
    feature_s = time.perf_counter() - t0
    y_tr = torch.tensor([int(ex["target"]) for ex in train])
    y_va = torch.tensor([int(ex["target"]) for ex in val])
    index = {id(ex): i for i, ex in enumerate(train)}
    draws = []
    for k in shots:
        for seed in ([0] if k == "all" else seeds):
            rows = (torch.arange(len(train)) if k == "all"
                    else torch.tensor([index[id(ex)] for ex in per_class(train, k, seed)]))
            draws.append((k, seed, rows))
    results = []
    for feat, xtr_all, xva_all in (("last", tr_last, va_last), ("mean", tr_mean, va_mean),
                                   ("normed", tr_normed, va_normed)):
        for layer in range(xtr_all.shape[0]):
            for k, seed, rows in draws:
                xtr = xtr_all[layer][rows].double()
                mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
                xtr, xva = (xtr - mu) / sd, (xva_all[layer].double() - mu) / sd
                for l2 in l2s:
                    w, b = fit_logistic(xtr, y_tr[rows], 2, l2=l2)
                    results.append({"feature": feat, "layer": layer, "k": k, "seed": seed, "l2": l2,
                                    "train": float(((xtr @ w.T + b).argmax(1) == y_tr[rows]).double().mean()),
                                    "validation": float(((xva @ w.T + b).argmax(1) == y_va).double().mean())})
            best = max((r for r in results if r["feature"] == feat and r["layer"] == layer and r["k"] == "all"),
                       key=lambda r: r["validation"], default=None)
            if best:
                print(f"{feat:6s} layer {layer:2d}: all-train best validation {best['validation']:.3f} "
                      f"(l2 {best['l2']:g})", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rec = make_record("demo-probe-layers", to_dict(cfg),
                      {"rows": results, "validation_n": len(val), "train_n": len(train),
                       "feature_seconds": feature_s, "forward_seconds_per_batch": secs,
                       "batch_size": args.batch_size, "threads": torch.get_num_threads()})
    print(write_record(new_record_path(RESULTS, "probe_layers"), rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
