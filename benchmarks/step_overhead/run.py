"""Step overhead of a two-sided ZO step against its physical limit, two forward passes.

    python benchmarks/step_overhead/run.py --shape 1x64 --rounds 10      # writes results/cpu_1x64_<time>.json
    python benchmarks/step_overhead/run.py --shape 8x128 --rounds 4 --variants zosgd_rademacher,zosgd_rademacher_deferred
    python benchmarks/step_overhead/report.py          # the README tables, from the JSON files only

Model: SmolLM2-135M (real weights when cached by `forwardonly models fetch
smollm2-135m`, else the same config at random init), fp32, CPU, causal-LM loss
on random token ids. In one process it measures, interleaved at every thread count of ``--threads``
(default: torch's default count, then 1; the order of thread counts alternates and the order of the
variants rotates every round so that machine noise hits every variant alike; one warm-up round is
discarded; medians are reported):

* ``forward``: a plain forward under ``torch.no_grad()``;
* ``zosgd_rademacher`` / ``zosgd_gaussian``: one ``ZOSGD.step`` with its defaults (two perturbed
  forwards and the update);
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

Ratios are ``median step / (2 x median forward)`` per thread count, from wall-clock time and from
process CPU time (with one thread, the work done, not the time spent descheduled; with several, it
also counts spinning workers). Steps use ``lr=1e-12`` so the update pass runs (``lr=0`` skips it) while
the weights barely move.

Memory: in the first timed round (after every variant's warm-up call), peak RSS
(the kernel's high-water mark, reset before each call) is taken over each call at the first thread
count; the ratio is peak during a step / peak during a plain forward, both absolute (weights included).

Every invocation writes a new JSON (``--out`` must not exist; by default a new name with the UTC time).
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
from forwardonly.bench.record import make_record, new_record_path, refuse_existing, write_record
from forwardonly.optim import ZOSGD, ZOSGDReference, pair_batch, pair_losses
from forwardonly.optim.perturb import native as _native

SMOLLM2 = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "tie_word_embeddings": True,
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0}
VARIANTS = ("zosgd_rademacher", "zosgd_rademacher_deferred", "zosgd_rademacher_paired",
            "zosgd_rademacher_paired_deferred", "zosgd_rademacher_torch", "zosgd_gaussian",
            "zosgd_rademacher_unfused", "mezo_reference_gaussian")
LR, EPS = 1e-12, 1e-3
RESULTS = Path(__file__).parent / "results"


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
    kw = {}  # only what the variant changes: zosgd_rademacher is ZOSGD with its defaults
    if "gaussian" in name:
        kw["direction"] = "gaussian"
    if name.endswith("_deferred"):
        kw["defer_update"] = True
    if "_paired" in name:
        kw["paired"] = True
    if name.endswith(("_unfused", "_torch")):
        kw["impl"] = "plain" if name.endswith("_unfused") else "torch"
    return ZOSGD(params, lr=LR, eps=EPS, seed=0, **kw)


def make_step(name: str, opt, loss, paired_loss):
    if "_paired" in name:
        return lambda: opt.step(paired_loss)
    return lambda: opt.step(loss)


def timed(fn) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def thread_counts(spec: str | None) -> list[int]:
    """``--threads``: comma-separated counts; default torch's own default count, then 1."""
    if spec:
        return [int(x) for x in spec.split(",") if x]
    default = torch.get_num_threads()
    return [default, 1] if default > 1 else [1]


def build(args, variants):
    """The model, the steps of every variant (plus ``forward``) and the run's description."""
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
    return steps, source, sum(p.numel() for p in params), b * t


def measure(steps: dict, threads: list[int], rounds: int, budget_s: float) -> tuple[dict, dict, dict, list]:
    """Interleaved rounds: per thread count, every step once (rotating order). Returns per-thread-count
    wall and CPU seconds per call, peak memory (first timed round, first thread count) and load averages."""
    names = list(steps)
    times = {n: {name: [] for name in names} for n in threads}
    cpu = {n: {name: [] for name in names} for n in threads}
    memory, load = {}, [os.getloadavg()]
    t_start = time.perf_counter()
    for r in range(rounds + 1):
        if r > 1 and time.perf_counter() - t_start > budget_s:
            print(f"time budget of {budget_s}s spent: stopping after {r - 1} timed rounds", flush=True)
            break
        for n in (threads if r % 2 == 0 else threads[::-1]):
            torch.set_num_threads(n)
            order = names if r == 1 else names[r % len(names):] + names[: r % len(names)]  # forward first in r1
            for name in order:
                if r == 1 and n == threads[0]:  # peak memory, after every variant's warm-up call
                    with PeakMemory() as m:
                        dt_ = timed(steps[name])
                    memory[name] = m.result()
                else:
                    dt_ = timed(steps[name])
                if r:  # round 0 is the warm-up
                    times[n][name].append(dt_[0])
                    cpu[n][name].append(dt_[1])
            if r:
                print(f"round {r}, {n} thread(s): " + ", ".join(
                    f"{k} {times[n][k][-1]:.3f}s (cpu {cpu[n][k][-1]:.3f}s)" for k in names), flush=True)
        load.append(os.getloadavg())
    torch.set_num_threads(threads[0])
    return times, cpu, memory, load


def summarize(times: dict, cpu: dict, variants: list[str]) -> dict:
    out = {}
    for n, per in times.items():
        med = {name: statistics.median(v) for name, v in per.items()}
        med_cpu = {name: statistics.median(v) for name, v in cpu[n].items()}
        out[str(n)] = {
            "median_s": med, "all_s": per, "median_cpu_s": med_cpu, "all_cpu_s": cpu[n],
            "ratio_step_over_2fwd": {name: med[name] / (2 * med["forward"]) for name in variants},
            "cpu_ratio_step_over_2fwd": {name: med_cpu[name] / (2 * med_cpu["forward"]) for name in variants},
            "timed_rounds": len(per["forward"]),
        }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1x64", help="BATCHxTOKENS")
    ap.add_argument("--out", default=None, help="result JSON; must not exist (default: results/cpu_<shape>_<UTC time>.json)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds after one warm-up round")
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts, measured in the same rounds (default: torch's default, 1)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--budget-s", type=float, default=3600.0, help="start no new round after this many seconds")
    args = ap.parse_args(argv)
    threads = thread_counts(args.threads)
    refuse_existing(args.out)  # before minutes of measuring: records are never overwritten
    out = Path(args.out) if args.out else new_record_path(RESULTS, f"cpu_{args.shape}")
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")

    steps, source, n_params, tokens = build(args, variants)
    times, cpu, memory, load = measure(steps, threads, args.rounds, args.budget_s)
    per_threads = summarize(times, cpu, variants)
    results = {
        "shape": args.shape,
        "threads": threads,
        "per_threads": per_threads,
        "memory": memory,
        "peak_rss_ratio_step_over_forward": {
            name: memory[name]["peak_rss"] / memory["forward"]["peak_rss"] for name in variants},
        "load_average_1_5_15min_per_round": load,
        "targets": {"ratio": 1.10 if tokens <= 64 else 1.05, "peak_rss_ratio": 1.05},
    }
    for n, res in per_threads.items():
        print(f"{args.shape}, {n} thread(s): forward {res['median_s']['forward']:.3f}s; " + "; ".join(
            f"{v} ratio {res['ratio_step_over_2fwd'][v]:.3f} cpu ratio {res['cpu_ratio_step_over_2fwd'][v]:.3f}"
            for v in variants), flush=True)
    config = {"model": source, "parameters": n_params, "dtype": "float32",
              "device": "cpu", "shape": args.shape, "eps": EPS, "lr": LR, "rounds": args.rounds,
              "warmup_rounds": 1, "threads": threads, "default_threads": threads[0] if args.threads is None else None,
              "variants": variants, "native_kernel": _native.status()}
    write_record(out, make_record("step_overhead", config, results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
