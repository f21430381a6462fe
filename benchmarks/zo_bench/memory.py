"""Peak memory of one training step on SmolLM2-135M, full-parameter: ZO versus first-order.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/zo_bench/memory.py          # the sweep -> results/memory.<UTC time>.json
    PYTHONPATH=src python benchmarks/zo_bench/memory.py --only inference,zo-sgd --points 16x256
    PYTHONPATH=src python benchmarks/zo_bench/memory.py --resume results/memory.<UTC time>.json.partial

Every measurement is a fresh process (one thread): it loads the cached
SmolLM2-135M in fp32, applies the scheme, builds the optimizer through
``forwardonly.train.build_optimizer`` (the code path of ``forwardonly train``),
makes a synthetic batch of ``batch x seq`` random tokens scored like the
sentiment task (label-word logits at the last position, ``logits_to_keep=1``),
and measures ONE step with :class:`forwardonly.bench.measure.PeakMemory`:

* ``peak_rss``: the kernel's high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs`` just before the step), the whole process;
* ``peak_anon``: ``RssAnon`` sampled every 0.5 ms (heap only, no file-backed pages);
* ``start_rss`` / ``start_anon``: just before the step (weights, batch, runtime);
* ``peak_rss_before_step``: the high-water mark before that reset, i.e. over loading and set-up; the
  whole process's peak over the whole measurement is the larger of it and ``peak_rss``.

Each sweep writes a new record (never over an old one); while it runs, what it has measured so far
is kept in ``<record>.partial`` (rewritten after every point, removed at the end), which
``--resume`` continues from.

The *baseline* - interpreter, libraries and weights, nothing else - is its own
process (method ``baseline``) measured once: its resident set after loading.
"Above baseline" is ``peak_rss - baseline.rss``. glibc is told to serve every
allocation over 64 KiB with ``mmap`` so freed buffers go back to the kernel and
are not hidden in an arena.

One step is enough: the first FO-Adam step allocates its gradients and both
moment buffers, and a ZO step is two forward passes with in-place perturbation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m"
# method -> (scheme, optim.name, extra TrainConfig overrides); "inference" and "baseline" run no optimizer
METHODS = {
    "baseline": ("full", None, {}),
    "inference": ("full", None, {}),
    "zo-sgd": ("full", "zo-sgd", {}),
    "fo-sgd": ("full", "fo-sgd", {}),
    "fo-adam": ("full", "fo-adam", {}),
    "fo-adam-lora": ("lora", "fo-adam", {}),
    "fo-adam-ckpt": ("full", "fo-adam", {"grad_checkpointing": True}),
    # memory-efficient first-order baselines (the ``baselines`` extra; forwardonly.lm.baselines)
    "fo-lomo": ("full", "fo-lomo", {}),
    "fo-lomo-ckpt": ("full", "fo-lomo", {"grad_checkpointing": True}),
    "fo-adalomo": ("full", "fo-adalomo", {}),  # lomo-optim's AdaLomo is CUDA only: fails on this CPU
    "fo-galore": ("full", "fo-galore", {}),
    "fo-galore-ckpt": ("full", "fo-galore", {"grad_checkpointing": True}),
}
# (batch, seq): 16x256 is the target point (first, so it is measured even if the sweep is cut short),
# then sequence length 64..1024 at batch 1 and batch 1..16 at 256 tokens (coarse: CPU time is scarce)
POINTS = [(16, 256), (1, 64), (1, 256), (1, 1024), (4, 256)]


def measure(method: str, batch: int, seq: int) -> dict:
    import gc

    import torch
    import torch.nn.functional as F

    from forwardonly.bench.measure import PeakMemory, anon_bytes, peak_rss_bytes, rss_bytes
    from forwardonly.config import load_config
    from forwardonly.lm.baselines import FusedBackward
    from forwardonly.lm.config import TrainConfig
    from forwardonly.lm.train import build_optimizer
    from forwardonly.models import apply_scheme, load_model, trainable_parameters
    from forwardonly.tasks.objectives import causal_forward

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    scheme, optim, extra = METHODS[method]
    model, tok = load_model(MODEL)
    if method == "baseline":
        gc.collect()
        untouched = rss_bytes()
        with torch.no_grad():  # weights are mmapped from safetensors: fault every page in, as any step will
            for p in model.parameters():
                p.sum()
        return {"rss": rss_bytes(), "anon": anon_bytes(), "peak_rss_incl_load": peak_rss_bytes(),
                "rss_before_touching_weights": untouched,
                "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
    model = apply_scheme(model, scheme)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tok.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    target = torch.randint(0, 2, (batch,), generator=g)
    label_ids = torch.tensor(tok([" negative", " positive"], add_special_tokens=False)["input_ids"])[:, 0]

    def loss_fn():
        scores = causal_forward(model, ids, mask, 1)[:, -1][:, label_ids]
        return F.cross_entropy(scores, target)

    opt = None
    if optim is not None:
        cfg = load_config(TrainConfig, None, None, base={"model": {"name": MODEL}, "scheme": {"name": scheme},
                                                         "optim": {"name": optim, "lr": 1e-6, **extra}})
        if getattr(cfg.optim.options, "grad_checkpointing", False):
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        named = trainable_parameters(model)
        opt = build_optimizer(cfg, [p for _, p in named], [n for n, _ in named])
        model.train(not cfg.optim.zeroth_order)  # as train.run: FO in train mode (checkpointing needs it)
    gc.collect()
    before = peak_rss_bytes()  # loading and set-up: PeakMemory resets the high-water mark
    with PeakMemory(interval=0.0005) as mem:
        t_step = time.perf_counter()
        if opt is None:
            with torch.no_grad():
                loss = loss_fn()
        elif cfg.optim.zeroth_order:
            loss = opt.step(loss_fn)
        elif isinstance(opt, FusedBackward):  # LOMO: the update happens inside backward
            loss = loss_fn()
            opt.backward_step(loss)
        else:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
        step_s = time.perf_counter() - t_step
    r = mem.result()
    return {**r, "peak_rss_before_step": before, "step_s": step_s, "total_s": time.perf_counter() - t0,
            "loss": float(loss),
            "trainable_parameters": sum(p.numel() for _, p in trainable_parameters(model))}


def child(method: str, batch: int, seq: int, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(batch), str(seq)]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"status": "failed", "returncode": p.returncode, "error": p.stderr.strip().splitlines()[-5:]}
    return {"status": "ok", **json.loads(p.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--only", help="comma-separated methods (default: all)")
    ap.add_argument("--points", help="comma-separated BATCHxSEQ points (default: the sweep)")
    ap.add_argument("--out", help="the record, which must not exist (default: a new results/memory.<UTC time>.json)")
    ap.add_argument("--resume", metavar="PARTIAL",
                    help="a stopped sweep's <record>.partial: keep its baseline and ok rows, measure the rest "
                         "and write its record")
    args = ap.parse_args(argv)
    if args.child:
        method, batch, seq = args.child
        print(json.dumps(measure(method, int(batch), int(seq))))
        return 0

    from forwardonly.bench.record import make_record, new_record_path, refuse_existing, write_record
    from forwardonly.io import atomic_write_json

    methods = args.only.split(",") if args.only else [m for m in METHODS if m != "baseline"]
    points = [tuple(int(v) for v in p.split("x")) for p in args.points.split(",")] if args.points else POINTS
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    started, baseline, rows, done = time.time(), None, [], set()
    if args.resume:
        partial = Path(args.resume)
        prev = json.loads(partial.read_text())
        baseline = prev["results"]["baseline"]
        rows = [r for r in prev["results"]["rows"] if r.get("status") == "ok"]
        done = {(r["method"], r["batch"], r["seq"]) for r in rows}
        started -= prev.get("wall_time_s", 0.0)
        out = Path(args.out or str(partial).removesuffix(".partial"))
    else:
        out = Path(args.out) if args.out else new_record_path(HERE / "results", "memory")
    refuse_existing(out)
    partial = Path(f"{out}.partial")
    if baseline is None or baseline.get("status") != "ok":
        baseline = child("baseline", 0, 0, env)
    print("baseline", json.dumps(baseline), flush=True)
    for batch, seq in points:
        for method in methods:
            if (method, batch, seq) in done:
                continue
            r = child(method, batch, seq, env)
            row = {"method": method, "batch": batch, "seq": seq, **r}
            if r["status"] == "ok" and baseline.get("status") == "ok":
                row["peak_rss_above_baseline"] = r["peak_rss"] - baseline["rss"]
                row["peak_anon_above_baseline"] = r["peak_anon"] - baseline["anon"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            # rewritten after every point, so an interrupted sweep still leaves what it measured
            atomic_write_json(partial, {"results": {"baseline": baseline, "rows": rows},
                                        "wall_time_s": time.time() - started})
    config = {"model": MODEL, "dtype": "float32", "threads": 1, "methods": {m: METHODS[m] for m in methods},
              "points": sorted({(r["batch"], r["seq"]) for r in rows}), "malloc_mmap_threshold": 65536,
              "steps_measured": 1}
    write_record(out, make_record("zo_bench/memory", config, {"baseline": baseline, "rows": rows},
                                  kind="memory_sweep", wall_time_s=time.time() - started,
                                  resumed_from=args.resume))
    partial.unlink(missing_ok=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from forwardonly.errors import script_main

    sys.exit(script_main(main))
