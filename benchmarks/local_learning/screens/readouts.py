"""Historic (rounds 3-5): how ff-seed100-combined.json and ff-seed100-round5.json were made. It ends by
scoring the test split, as every training run did then; new screens use ../screen.py, which never reads it.

Screen Forward-Forward read-outs on validation: one ff-hard run, several predictions scored per epoch.

    PYTHONPATH=src python benchmarks/local_learning/screens/readouts.py OUT.json seed=100 threads=1 epochs=12 patience=0 [KEY=VALUE ...]

Each epoch's validation score is recorded for: goodness summed over layers (what
``ff.predict=goodness`` uses), each layer's goodness alone, layers 2 and up, the
probe, and ``log_softmax(t * alpha * goodness) + log_softmax(probe)`` for t = 0.25,
1, 4 (t = 1 is ``ff.predict=combined``). Early stopping, if any, follows goodness.
"""

import json
import sys

import torch
import torch.nn.functional as F

from forwardonly.config import load_config
from forwardonly.local import ff as ffmod
from forwardonly.local import trainer
from forwardonly.local.config import LocalConfig


def goodness_per_layer(model, x):
    out = []
    for c in range(model.n_classes):
        h, gs = model._embed(x, torch.full((len(x),), c, dtype=torch.long)), []
        for k in range(len(model.layers)):
            h = model._layer(k, h)
            gs.append(ffmod.goodness(h))
        out.append(torch.stack(gs, 1))
    return torch.stack(out, 1)  # (batch, classes, layers)


@torch.no_grad()
def evaluate(self, x, y, batch_size=1024):
    hits = {}

    def add(key, pred, yb):
        hits[key] = hits.get(key, 0) + int((pred == yb).sum())

    alpha = self.cfg.ff.alpha
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        g, p = goodness_per_layer(self, xb), self.probe(self._features(xb))
        add("goodness", g.sum(2).argmax(1), yb)
        for k in range(g.shape[2]):
            add(f"g_layer{k + 1}", g[:, :, k].argmax(1), yb)
        if g.shape[2] > 1:
            add("g_skip1", g[:, :, 1:].sum(2).argmax(1), yb)
        add("probe", p.argmax(1), yb)
        for t in (0.25, 1.0, 4.0):
            add(f"ens{t}", (F.log_softmax(t * alpha * g.sum(2), 1) + F.log_softmax(p, 1)).argmax(1), yb)
    n = max(1, len(y))
    res = {f"acc_{k}": v / n for k, v in hits.items()}
    res["acc"] = res["acc_goodness"]
    return res


def main():
    ffmod.ForwardForward.evaluate = evaluate
    cfg = load_config(LocalConfig, "benchmarks/local_learning/experiments/ff-hard.yaml", sys.argv[2:])
    s = trainer.train(cfg, log=lambda line: print(line, flush=True))
    test = {k: v for k, v in s.items() if k.startswith("test_")}
    with open(sys.argv[1], "w") as f:
        json.dump({"config": sys.argv[2:], "history": s["history"], "test": test}, f, indent=1)
    print(test)


if __name__ == "__main__":
    main()
