"""What can the demo reach by training SmolLM2-135M's final normalisation weights alone, and how fast with ZO?

Usage (from the repository root; ~1,800 forward rows of SmolLM2-135M, then seconds)::

    PYTHONPATH=src python benchmarks/demo/final_norm.py --out benchmarks/demo/results/final_norm.json

With every weight but ``model.norm.weight`` (576 numbers) frozen, the label-word logits of a sentence are
``rmsnorm(h) * g @ W_label^T`` where ``h`` is the last position's hidden state entering the final norm: a
function of ``g`` and of ``h``, which training does not change. So one pass over the sentences (features
cached) makes the loss of any ``g`` exact and cheap, and this script

1. checks the cache: the zero-shot accuracy recomputed from it must equal ``forwardonly``'s evaluation;
2. measures the scheme's ceiling: L-BFGS on the training sentences' cross-entropy (a first-order bound,
   on validation and test);
3. simulates two-sided ZO-SGD on ``g`` exactly as the optimizer computes it (Rademacher directions,
   ``(L+ - L-) / 2 eps``, ``q`` probes, batches of 16 as the demo draws them) over a grid of learning rates,
   probes and schedules, scored on the validation split every 25 steps: which recipe reaches what in how
   many forward passes. Choices are read on validation; test is reported only for the chosen recipe.

Nothing here trains the demo: it tells which recipe to run for real.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time

import torch


def features(model, objective, examples, batch_size=32):
    """(n, 576) hidden states entering the final norm at each sentence's last position, and targets."""
    feats = []
    hook = model.model.norm.register_forward_hook(lambda mod, inp, out: feats.append(inp[0][:, -1, :].detach()))
    ys = []
    try:
        with torch.no_grad():
            for i in range(0, len(examples), batch_size):
                b = objective.batch(examples[i:i + batch_size], "cpu")
                objective.scores(model, b)
                ys.append(b.target)
    finally:
        hook.remove()
    return torch.cat(feats).double(), torch.cat(ys)


def logits(h, g, w, eps):
    """Label logits of final-norm weight(s) ``g`` ((576,) or (k, 576)) on features ``h`` (n, 576)."""
    normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if g.dim() == 1:
        return (normed * g) @ w.T
    return torch.einsum("nd,kd,cd->knc", normed, g, w)


def ce(h, y, g, w, eps):
    z = logits(h, g, w, eps)
    if z.dim() == 2:
        return torch.nn.functional.cross_entropy(z, y)
    return torch.stack([torch.nn.functional.cross_entropy(zk, y) for zk in z])


def acc(h, y, g, w, eps):
    return float((logits(h, g, w, eps).argmax(-1) == y).double().mean())


def ceiling(data, g0, w, eps):
    g = g0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([g], max_iter=300, line_search_fn="strong_wolfe")
    h, y = data["train"]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits(h, g, w, eps), y)
        loss.backward()
        return loss

    opt.step(closure)
    g = g.detach()
    return {s: acc(*data[s], g, w, eps) for s in data}


def zo_sgd(data, g0, w, eps_norm, *, lr, q, eps, steps, batch=16, schedule="constant", seed=0, every=25):
    """Two-sided ZO-SGD on g; returns the validation curve [(forwards, accuracy)] and the final g."""
    h, y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    g = g0.clone()
    order = torch.randperm(len(y), generator=gen)
    curve = [(0, acc(*data["validation"], g, w, eps_norm))]
    for t in range(steps):
        idx = order[(torch.arange(batch) + t * batch) % len(y)]
        hb, yb = h[idx], y[idx]
        z = torch.randint(0, 2, (q, g.numel()), generator=gen).double() * 2 - 1
        lp = ce(hb, yb, g + eps * z, w, eps_norm)
        lm = ce(hb, yb, g - eps * z, w, eps_norm)
        proj = (lp - lm) / (2 * eps)
        step_lr = lr if schedule == "constant" else lr * 0.5 * (1 + math.cos(math.pi * t / max(1, steps - 1)))
        g = g - step_lr * (proj[:, None] * z).mean(0)
        if (t + 1) % every == 0:
            curve.append((2 * q * (t + 1), acc(*data["validation"], g, w, eps_norm)))
    return curve, g


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="result JSON (a new file)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--forwards", type=int, default=800, help="ZO budget per simulated run (forward passes)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from forwardonly.bench.record import make_record, write_record
    from forwardonly.models import load_model
    from forwardonly.tasks import evaluate, get_task, make_objective

    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m")
    task = get_task("sentiment")
    obj = make_objective(task, tok, "ce", 96, model=model)
    data = {s: features(model, obj, task.splits[s]) for s in ("train", "validation", "test")}
    feature_s = time.perf_counter() - t0
    w = model.lm_head.weight[obj.label_ids].detach().double()
    g0 = model.model.norm.weight.detach().double()
    eps_norm = model.model.norm.variance_epsilon
    zero_shot = {s: acc(*data[s], g0, w, eps_norm) for s in data}
    real = evaluate(model, tok, task, "validation", batch_size=32, max_length=96)["accuracy"]
    print(f"zero-shot from cache {zero_shot}, forwardonly's validation {real}", file=sys.stderr)
    ceil = ceiling(data, g0, w, eps_norm)
    print(f"final-norm ceiling (L-BFGS on train) {ceil}", file=sys.stderr)
    grid = []
    for lr, q, eps, schedule in itertools.product((3e-3, 1e-2, 3e-2, 1e-1), (1, 4), (1e-3,), ("constant", "cosine")):
        steps = args.forwards // (2 * q)
        curves = [zo_sgd(data, g0, w, eps_norm, lr=lr, q=q, eps=eps, steps=steps, schedule=schedule, seed=s)[0]
                  for s in range(3)]
        finals = [c[-1][1] for c in curves]
        grid.append({"lr": lr, "q": q, "eps": eps, "schedule": schedule, "steps": steps,
                     "validation_final": finals, "curves": curves})
        print(f"lr {lr:g} q {q} {schedule}: validation {[round(f, 3) for f in finals]}", file=sys.stderr)
    best = max(grid, key=lambda r: sorted(r["validation_final"])[1])
    _, g = zo_sgd(data, g0, w, eps_norm, lr=best["lr"], q=best["q"], eps=best["eps"], steps=best["steps"],
                  schedule=best["schedule"], seed=0)
    chosen = {k: best[k] for k in ("lr", "q", "eps", "schedule", "steps")}
    chosen["test_seed0"] = acc(*data["test"], g, w, eps_norm)
    results = {"zero_shot": zero_shot, "zero_shot_validation_forwardonly": real, "ceiling_lbfgs": ceil,
               "zo_grid": grid, "chosen_on_validation": chosen, "feature_time_s": feature_s,
               "n": {s: len(data[s][1]) for s in data}}
    write_record(args.out, make_record("demo/final_norm", {"forwards": args.forwards, "threads": args.threads},
                                       results, status="ok"))
    print(json.dumps({k: v for k, v in results.items() if k != "zo_grid"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
