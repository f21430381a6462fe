"""How well this machine scales compute-bound work from one process to two (no ZO, no communication).

Runs the forward of SmolLM2-135M's architecture (random init, 1 thread, batch 8 x 64 tokens) in one
process, then in two independent processes at once, and prints each one's median time; then the same
for a ZO-SGD step (two perturbed forwards and the update). No process talks to another, so the ratios
are what the machine allows: an upper bound for any 2-process benchmark of the same work.

    python benchmarks/distributed/scaling_check.py     # -> results/scaling_check.<UTC time>.json

Each run writes a new record (never over an old one): every process's times, medians, and the
throughput ratios ``2 x alone / each of the pair``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(tag: str, zo: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (8, 64))
    if zo:
        from forwardonly.optim import ZOSGD

        opt = ZOSGD(model.parameters(), lr=1e-12, eps=1e-3, seed=0)

        def work():
            opt.step(lambda: model(input_ids=ids, labels=ids).loss)
    else:
        def work():
            model(input_ids=ids, labels=ids)
    times = []
    with torch.no_grad():
        work()
        for _ in range(5):
            t = time.perf_counter()
            work()
            times.append(time.perf_counter() - t)
    what = "ZO-SGD step" if zo else "forward"
    print(f"{tag}: median {what} {statistics.median(times):.3f} s", file=sys.stderr, flush=True)
    print(json.dumps({"tag": tag, "times_s": times, "median_s": statistics.median(times)}), flush=True)


def _run(cmds: list[list[str]]) -> list[dict]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a worker failed")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--worker":
        worker(sys.argv[3], sys.argv[2] == "zo")
        return
    from forwardonly.bench.record import make_record, new_record_path, write_record

    results, load = {}, [os.getloadavg()[0]]
    for kind in ("forward", "zo"):
        me = [sys.executable, __file__, "--worker", kind]
        alone = _run([me + ["alone"]])[0]
        pair = _run([me + [f"pair {i}"] for i in range(2)])
        load.append(os.getloadavg()[0])
        results[kind] = {"alone": alone, "pair": pair,
                         "throughput_ratio": [2 * alone["median_s"] / p["median_s"] for p in pair]}
    config = {"model": "SmolLM2-135M architecture, random init", "batch": 8, "seq": 64, "threads": 1,
              "timed": 5, "warmup": 1}
    path = write_record(new_record_path(Path(__file__).resolve().parent / "results", "scaling_check"),
                        make_record("distributed-scaling-check", config, results, load_average_1min=load,
                                    cpu_count=os.cpu_count()))
    print(f"wrote {path}")


if __name__ == "__main__":
    from forwardonly.errors import script_main

    sys.exit(script_main(main))
