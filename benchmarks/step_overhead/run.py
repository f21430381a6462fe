"""Step overhead of a two-sided ZO step against its physical limit, two forward passes.

    python benchmarks/step_overhead/run.py --shape 1x64 --threads 1 --out benchmarks/step_overhead/results/cpu_1x64.json
    python benchmarks/step_overhead/run.py --shape 8x128 --threads 1 --rounds 3 \
        --out benchmarks/step_overhead/results/cpu_8x128.json
    python benchmarks/step_overhead/report.py          # the README table, from the JSON files only

Model: SmolLM2-135M (real weights when cached by `forwardonly models fetch
smollm2-135m`, else the same config at random init), fp32, CPU, causal-LM loss
on random token ids. In one process it measures, interleaved (the order rotates
every round so that machine noise hits every variant alike; one warm-up round is
discarded; medians are reported):

* ``forward``: a plain forward under ``torch.no_grad()``;
* ``zosgd_rademacher`` / ``zosgd_gaussian``: one ``ZOSGD.step`` (two perturbed
  forwards and the update) on the fast path;
* ``zosgd_rademacher_deferred``: the same with ``defer_update=True`` (the update is
  written by the next step's first perturbed pass, block by block, as ZO2 does);
* ``zosgd_rademacher_paired`` (and ``_paired_deferred``): ``ZOSGD(paired=True)``: both perturbed
  forwards of the step as one forward over the batch stacked twice, whose halves see ``w + eps z``
  and ``w - eps z``; the closure computes each row's causal-LM loss itself and returns the two
  halves' means (the same loss as ``labels=ids``);
* ``zosgd_rademacher_torch``: ``zosgd_rademacher`` with ``impl="torch"`` (the native
  kernel off: the torch fallback used where no C compiler is available);
* ``zosgd_rademacher_unfused``: the same step with ``impl="plain"`` (every
  module gets a whole perturbed copy of its parameters: the path before the fused
  linear/embedding);
* ``mezo_reference_gaussian``: the ``ZOSGDReference`` twin, MeZO as published
  (in-place perturbation, four regenerations of each Gaussian direction per step).

Ratios are ``median step / (2 x median forward)``, from wall-clock time and, as
the figure that survives a shared machine best, from process CPU time (with one
thread, the CPU time is the work done, not the time spent descheduled). Steps use ``lr=1e-12`` so the
update pass runs (``lr=0`` skips it) while the weights barely move.

Memory: in the first timed round (after every variant's warm-up call), peak RSS
(the kernel's high-water mark, reset before each call) is taken over each call;
the ratio is peak during a step / peak during a plain forward, both absolute
(weights included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from forwardonly.bench.measure import PeakMemory
from forwardonly.bench.record import make_record, write_record
from forwardonly.optim import ZOSGD, ZOSGDReference, pair_batch, pair_losses
from forwardonly.optim.perturb import native as _native

SMOLLM2 = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "tie_word_embeddings": True,
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0}
VARIANTS = ("zosgd_rademacher", "zosgd_rademacher_deferred", "zosgd_rademacher_paired",
            "zosgd_rademacher_paired_deferred", "zosgd_rademacher_torch", "zosgd_gaussian",
            "zosgd_rademacher_unfused", "mezo_reference_gaussian")
LR, EPS = 1e-12, 1e-3


def load_model():
    try:
        from forwardonly.models import load_model as load

        model, _ = load("smollm2-135m", dtype=torch.float32)
        return model.eval(), "smollm2-135m (pretrained, zoo cache)"
    except Exception as e:  # noqa: BLE001 - not cached, models extra missing, ...: fall back to random init
        print(f"pretrained weights unavailable ({type(e).__name__}: {e}); using random init", file=sys.stderr)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2)).float().eval(), "smollm2-135m config, random init"


def make_optimizer(name: str, params):
    if name == "mezo_reference_gaussian":
        return ZOSGDReference(params, lr=LR, eps=EPS, seed=0, direction="gaussian")
    impl = "plain" if name.endswith("_unfused") else "torch" if name.endswith("_torch") else "auto"
    return ZOSGD(params, lr=LR, eps=EPS, seed=0, direction="gaussian" if "gaussian" in name else "rademacher",
                 defer_update=name.endswith("_deferred"), paired="_paired" in name, impl=impl)


def make_step(name: str, opt, loss, paired_loss):
    if "_paired" in name:
        return lambda: opt.step(paired_loss)
    return lambda: opt.step(loss)


def timed(fn) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1x64", help="BATCHxTOKENS")
    ap.add_argument("--out", default=None, help="result JSON (default results/cpu_<shape>.json)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds after one warm-up round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--budget-s", type=float, default=3600.0, help="start no new round after this many seconds")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or Path(__file__).parent / "results" / f"cpu_{args.shape}.json")
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")

    model, source = load_model()
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    b, t = map(int, args.shape.split("x"))
    ids = torch.randint(0, model.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0))

    def loss():
        return model(input_ids=ids, labels=ids).loss

    ids2 = pair_batch(ids)

    def paired_loss():  # per-row causal-LM loss over the doubled batch, the mean of each half
        logits = model(input_ids=ids2).logits.float()
        per = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids2[:, 1:].reshape(-1),
                              reduction="none")
        return pair_losses(per.view(ids2.shape[0], -1).mean(1))

    def forward():
        with torch.no_grad():
            loss()

    optims = {name: make_optimizer(name, params) for name in variants}
    steps = {"forward": forward, **{name: make_step(name, o, loss, paired_loss) for name, o in optims.items()}}

    names = list(steps)
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    memory = {}
    load = [os.getloadavg()]
    t_start = time.perf_counter()
    for r in range(args.rounds + 1):
        if r > 1 and time.perf_counter() - t_start > args.budget_s:
            print(f"time budget of {args.budget_s}s spent: stopping after {r - 1} timed rounds", flush=True)
            break
        order = names if r == 1 else names[r % len(names):] + names[: r % len(names)]  # forward first in r1
        for name in order:
            if r == 1:  # the first timed round also takes peak memory, after every variant's warm-up
                with PeakMemory() as m:
                    dt = timed(steps[name])
                memory[name] = m.result()
            else:
                dt = timed(steps[name])
            if r:  # round 0 is the warm-up
                times[name].append(dt[0])
                cpu[name].append(dt[1])
        load.append(os.getloadavg())
        if r:
            print(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.3f}s (cpu {cpu[n][-1]:.3f}s)" for n in names),
                  flush=True)

    med = {name: statistics.median(v) for name, v in times.items()}
    med_cpu = {name: statistics.median(v) for name, v in cpu.items()}
    results = {
        "shape": args.shape,
        "median_s": med,
        "all_s": times,
        "ratio_step_over_2fwd": {name: med[name] / (2 * med["forward"]) for name in variants},
        "median_cpu_s": med_cpu,
        "all_cpu_s": cpu,
        "cpu_ratio_step_over_2fwd": {name: med_cpu[name] / (2 * med_cpu["forward"]) for name in variants},
        "memory": memory,
        "peak_rss_ratio_step_over_forward": {
            name: memory[name]["peak_rss"] / memory["forward"]["peak_rss"] for name in variants},
        "timed_rounds": len(times["forward"]),
        "load_average_1_5_15min_per_round": load,
        "targets": {"ratio": 1.10 if b * t <= 64 else 1.05, "peak_rss_ratio": 1.05},
    }
    print(f"{args.shape}: forward {med['forward']:.3f}s; " + "; ".join(
        f"{n} {med[n]:.3f}s ratio {results['ratio_step_over_2fwd'][n]:.3f} "
        f"cpu ratio {results['cpu_ratio_step_over_2fwd'][n]:.3f} "
        f"mem {results['peak_rss_ratio_step_over_forward'][n]:.3f}" for n in variants), flush=True)
    config = {"model": source, "parameters": sum(p.numel() for p in params), "dtype": "float32",
              "device": "cpu", "shape": args.shape, "eps": EPS, "lr": LR, "rounds": args.rounds,
              "warmup_rounds": 1, "threads": torch.get_num_threads(), "variants": variants,
              "native_kernel": _native.status(),
              "command": "python benchmarks/step_overhead/run.py " + " ".join(argv or sys.argv[1:])}
    write_record(out, make_record("step_overhead", config, results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
