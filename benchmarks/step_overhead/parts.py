"""Where a ZO step's time goes: the perturbed forwards, the plain forward and the update, part by part.

    python benchmarks/step_overhead/parts.py --shape 1x64 --rounds 8 \\
        --out benchmarks/step_overhead/results/profile_1x64_2threads_<date>.json

Same model and closure as ``run.py`` (SmolLM2-135M, fp32, CPU, causal-LM loss on random ids). In each
round, interleaved: one plain forward, then one ``ZOSGD.step`` per variant (the default immediate update,
and ``defer_update=True``) whose parts are timed by wrapping the optimizer's own methods:

* ``pass_1`` / ``pass_2``: the two perturbed forwards (``Evaluator.point``; ``pass_1`` draws the step's
  random words, and with ``defer_update`` also writes the previous step's update);
* ``update``: ``ZOOptimizer._apply`` (with ``defer_update``: only recording it);
* inside each part: ``kernel`` (the native perturbation kernel, ``native.sign_add_f32`` /
  ``sign_add2_f32``, threads included) and ``words`` (drawing random words); the rest of a pass is the
  model's forward plus Python dispatch;
* ``other``: the step minus its parts (estimate bookkeeping, hold and release).

Wall-clock and process CPU seconds, medians over the timed rounds (one warm-up round discarded). The
wrappers add about a microsecond per kernel call (~1000 calls per step). Threads: torch's default
unless ``--threads`` is given. Each invocation writes a new JSON; an existing ``--out`` is refused.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from forwardonly.bench.record import make_record, new_record_path, refuse_existing, write_record
from forwardonly.optim import ZOSGD
from forwardonly.optim.perturb import directions as _directions
from forwardonly.optim.perturb import native as _native

sys.path.insert(0, str(Path(__file__).parent))
from run import EPS, LR, RESULTS, load_model

VARIANTS = {"zosgd_rademacher": {}, "zosgd_rademacher_deferred": {"defer_update": True}}


class Parts:
    """Wall and CPU seconds per part of a step, and per sub-part inside the part that is running."""

    def __init__(self):
        self.part = None
        self.times: dict[str, list[float]] = {}

    def add(self, key: str, wall: float, cpu: float) -> None:
        acc = self.times.setdefault(key, [0.0, 0.0])
        acc[0] += wall
        acc[1] += cpu

    def whole(self, name: str, fn):
        """Wrap ``fn`` as a part (``name`` may be a callable giving the name at call time)."""
        def wrapped(*args, **kwargs):
            outer, self.part = self.part, name() if callable(name) else name
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(self.part, time.perf_counter() - t0, time.process_time() - c0)
                self.part = outer
        return wrapped

    def sub(self, name: str, fn):
        """Wrap ``fn`` as a sub-part of whichever part is running."""
        def wrapped(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(f"{self.part or 'outside'}.{name}", time.perf_counter() - t0, time.process_time() - c0)
        return wrapped


def instrument(opt, parts: Parts) -> None:
    """Time ``opt``'s perturbed passes and update (as instance attributes: other optimizers untouched)."""
    count = [0]

    def pass_name():
        count[0] += 1
        return f"pass_{count[0]}"

    opt.evaluator.point = parts.whole(pass_name, opt.evaluator.point)
    opt._apply = parts.whole("update", opt._apply)
    step = opt.step

    def timed_step(closure):
        count[0] = 0
        return step(closure)

    opt.step = parts.whole("step", timed_step)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1x64", help="BATCHxTOKENS")
    ap.add_argument("--rounds", type=int, default=8, help="timed rounds after one warm-up round")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own default)")
    ap.add_argument("--out", default=None, help="result JSON (default: a new file under results/)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    refuse_existing(args.out)
    out = Path(args.out) if args.out else new_record_path(RESULTS, f"profile_{args.shape}_{threads}threads")

    model, source = load_model()
    params = list(model.parameters())
    b, t = map(int, args.shape.split("x"))
    ids = torch.randint(0, model.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(0))

    def loss():
        return model(input_ids=ids, labels=ids).loss

    parts = {name: Parts() for name in VARIANTS}
    opts = {}
    for name, kw in VARIANTS.items():
        opts[name] = ZOSGD(params, lr=LR, eps=EPS, seed=0, **kw)
        instrument(opts[name], parts[name])
    live = [None]
    _native.sign_add_f32 = _sub(live, "kernel", _native.sign_add_f32)
    _native.sign_add2_f32 = _sub(live, "kernel", _native.sign_add2_f32)
    _directions.random_words = _sub(live, "words", _directions.random_words)

    forward, rounds = [], []
    for r in range(args.rounds + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            loss()
        fwd = (time.perf_counter() - t0, time.process_time() - c0)
        per = {}
        for name in (VARIANTS if r % 2 else reversed(VARIANTS)):
            p = parts[name]
            p.times.clear()
            live[0] = p
            opts[name].step(loss)
            live[0] = None
            per[name] = {k: tuple(v) for k, v in p.times.items()}
        if r:
            forward.append(fwd)
            rounds.append(per)
            print(f"round {r}: forward {fwd[0]:.3f}s, " + ", ".join(
                f"{n} {per[n]['step'][0]:.3f}s" for n in VARIANTS), flush=True)
    results = summarize(forward, rounds)
    config = {"model": source, "shape": args.shape, "threads": threads, "rounds": args.rounds, "warmup_rounds": 1,
              "eps": EPS, "lr": LR, "variants": VARIANTS, "native_kernel": _native.status()}
    results["load_average_1_5_15min"] = os.getloadavg()
    write_record(out, make_record("step_overhead_profile", config, results))
    print(table(results))
    print(f"wrote {out}")


def _sub(live, name, fn):
    def wrapped(*args, **kwargs):
        p = live[0]
        return p.sub(name, fn)(*args, **kwargs) if p is not None else fn(*args, **kwargs)
    return wrapped


def derived(fwd: tuple[float, float], parts: dict) -> dict:
    """One round's parts plus, per pass, what it costs beyond a plain forward other than the kernel and the
    words (``pass_k.rest``: Python dispatch, the matmuls on the perturbed scratch), and ``other``: the step
    minus its parts."""
    out = dict(parts)
    top = [k for k in parts if "." not in k and k != "step"]
    for k in top:
        if k.startswith("pass_"):
            out[f"{k}.rest"] = tuple(parts[k][i] - fwd[i] - parts.get(f"{k}.kernel", (0, 0))[i]
                                     - parts.get(f"{k}.words", (0, 0))[i] for i in (0, 1))
    out["other"] = tuple(parts["step"][i] - sum(parts[k][i] for k in top) for i in (0, 1))
    return out


def summarize(forward, rounds) -> dict:
    """Medians (wall, CPU) over the rounds of the forward and of every part of every variant."""
    med = {"forward": [statistics.median(f[i] for f in forward) for i in (0, 1)]}
    for name in VARIANTS:
        per = [derived(f, r[name]) for f, r in zip(forward, rounds)]
        keys = sorted({k for r in per for k in r}, key=lambda k: (k != "step", k == "other", k))
        med[name] = {k: [statistics.median(r.get(k, (0.0, 0.0))[i] for r in per) for i in (0, 1)] for k in keys}
    return {"median_wall_cpu_s": med, "all_forward_wall_cpu_s": forward, "all_parts_wall_cpu_s": rounds}


def table(results) -> str:
    med = results["median_wall_cpu_s"]
    fwd = med["forward"]
    lines = ["| variant | part | wall (s) | x forward | CPU (s) |", "|---|---|---|---|---|",
             f"| - | plain forward | {fwd[0]:.4f} | 1.000 | {fwd[1]:.4f} |"]
    for name in VARIANTS:
        for k, (w, c) in med[name].items():
            lines.append(f"| {name} | {k} | {w:.4f} | {w / fwd[0]:.3f} | {c:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
