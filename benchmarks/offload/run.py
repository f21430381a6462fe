"""Block streaming with offloading on a 1.1B Llama: peak anonymous memory and step time.

    PYTHONPATH=src python benchmarks/offload/run.py        # measure -> a new results/tinyllama-1.1b.<UTC time>.json
    python benchmarks/offload/report.py --write            # the README tables, from results/ only

The model has TinyLlama-1.1B's shape (LlamaConfig: vocab 32000, hidden 2048,
intermediate 5632, 22 layers, 32 heads, 4 kv heads, untied head) at random
init: N(0, 0.02) weights, unit norms, drawn from a seeded generator. The fp32
weights (4.4 GB) are written once to ``--scratch`` (not part of the repository)
as a safetensors file; reruns reuse it.

One process, in order:

1. **Streamed memory.** Nothing else is loaded. A weightless skeleton
   (``empty_model``), a disk-tier ``WeightStore`` (working copy in the scratch
   dir, mapped), ``StreamedZO`` over ``ZOSGD``: ``warmup + steps`` steps on one
   ``batch x seq`` batch under ``PeakMemory``. Peak anonymous memory is the
   process's ``RssAnon`` high-water mark (sampled every 2 ms; interpreter and
   torch included), set against the fp32 weight bytes.
2. **Step time, interleaved.** The in-memory model (weights read into RAM) and
   a fresh streamed run from the same file and seed alternate step by step, so
   load from elsewhere on the machine hits both alike. The working copy was
   just written, so it is in the page cache. The first ``warmup`` steps of each
   are discarded; medians of the rest. Both runs take the same steps from the
   same weights with the same seed, so their losses must agree bit for bit at
   every step, and after a final flush every weight is compared too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINYLLAMA_1_1B = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                  "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
                  "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def skeleton():
    from transformers import LlamaConfig, LlamaForCausalLM

    from forwardonly.offload import empty_model

    return empty_model(lambda: LlamaForCausalLM(LlamaConfig(**TINYLLAMA_1_1B))).eval()


def write_weights(path: Path, seed: int = 0) -> int:
    """Random-init fp32 weights as safetensors, generated and written tensor by tensor."""
    import torch

    from forwardonly.io import atomic_path

    params = list(skeleton().named_parameters())
    header, off = {}, 0
    for name, p in params:
        n = p.numel() * 4
        header[name] = {"dtype": "F32", "shape": list(p.shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    chunk = 1 << 24
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for k, (name, p) in enumerate(params):
            gen = torch.Generator().manual_seed(seed * 1000 + k)
            for s in range(0, p.numel(), chunk):
                n = min(chunk, p.numel() - s)
                t = torch.ones(n) if name.endswith("norm.weight") else torch.empty(n).normal_(0, 0.02, generator=gen)
                f.write(t.numpy().tobytes())
    return off


def _cpu(before) -> dict:
    """User and system CPU seconds of the whole process (all threads) since ``before``."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": round(now.ru_utime - before.ru_utime, 3), "sys_s": round(now.ru_stime - before.ru_stime, 3)}


def measure(args) -> None:
    import torch
    from safetensors.torch import load_file

    from forwardonly.bench.measure import PeakMemory, anon_bytes
    from forwardonly.bench.record import make_record, new_record_path, write_record
    from forwardonly.offload import StreamedZO, WeightStore
    from forwardonly.optim import ZOSGD

    torch.set_num_threads(args.threads)
    scratch = Path(args.scratch)
    weights = scratch / "tinyllama-1.1b-random.safetensors"
    if not weights.exists():
        t0 = time.perf_counter()
        write_weights(weights)
        print(f"wrote {weights} in {time.perf_counter() - t0:.0f}s", flush=True)
    weight_bytes = weights.stat().st_size
    ids = torch.randint(0, TINYLLAMA_1_1B["vocab_size"], (args.batch, args.seq),
                        generator=torch.Generator().manual_seed(1))
    opt_kw = dict(lr=1e-6, eps=1e-3, seed=0)
    load = [os.getloadavg()[0]]

    # 1. streamed, alone in the process
    anon_start = anon_bytes()
    t0 = time.perf_counter()
    model = skeleton()
    store = WeightStore(weights, workdir=scratch / "work")
    zo = StreamedZO(model, ZOSGD(model.parameters(), **opt_kw), store)
    setup_s = time.perf_counter() - t0
    times = []
    with PeakMemory() as mem:
        for _ in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            zo.step(lambda: model(input_ids=ids, labels=ids).loss)
            times.append(time.perf_counter() - t0)
    streamed_mem = {**mem.result(), "anon_at_start": anon_start, "setup_s": setup_s,
                    "step_s": times, "median_step_s": statistics.median(times[args.warmup:])}
    print(f"streamed alone: peak anon {mem.peak_anon / 2**30:.2f} GiB "
          f"({mem.peak_anon / weight_bytes:.2f}x weights), steps {[round(t, 2) for t in times]}", flush=True)
    zo.close(materialize=False)
    store.close()
    del zo, model, store
    load.append(os.getloadavg()[0])

    # 2. interleaved step times, in-memory vs streamed, same weights and seed
    mem_model = skeleton()
    state = load_file(str(weights))
    for name, p in mem_model.named_parameters():
        p.data = state[name]
    del state
    mem_opt = ZOSGD(mem_model.parameters(), **opt_kw)
    model = skeleton()
    store = WeightStore(weights, workdir=scratch / "work")
    zo = StreamedZO(model, ZOSGD(model.parameters(), **opt_kw), store)
    t_mem, t_str, l_mem, l_str, cpu_mem, cpu_str = [], [], [], [], [], []
    peak_mem_model = None
    for r in range(args.warmup + args.rounds):
        u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if r == 0:
            with PeakMemory() as m0:
                l_mem.append(mem_opt.step(lambda: mem_model(input_ids=ids, labels=ids).loss).item())
            peak_mem_model = m0.result()
        else:
            l_mem.append(mem_opt.step(lambda: mem_model(input_ids=ids, labels=ids).loss).item())
        t_mem.append(time.perf_counter() - t0)
        cpu_mem.append(_cpu(u0))
        u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        l_str.append(zo.step(lambda: model(input_ids=ids, labels=ids).loss).item())
        t_str.append(time.perf_counter() - t0)
        cpu_str.append(_cpu(u0))
        load.append(os.getloadavg()[0])
        print(f"round {r}: in-memory {t_mem[-1]:.2f}s {cpu_mem[-1]} streamed {t_str[-1]:.2f}s {cpu_str[-1]} "
              f"losses {l_mem[-1]!r} {l_str[-1]!r} load {load[-1]:.1f}", flush=True)
    t0 = time.perf_counter()
    zo.flush()
    flush_s = time.perf_counter() - t0
    cur = zo.streamer.current()
    mismatched = [n for n, p in mem_model.named_parameters() if not torch.equal(cur[n], p.data)]
    med_mem, med_str = statistics.median(t_mem[args.warmup:]), statistics.median(t_str[args.warmup:])
    results = {
        "weight_bytes_fp32": weight_bytes,
        "streamed_alone": streamed_mem,
        "streamed_peak_anon_over_weights": streamed_mem["peak_anon"] / weight_bytes,
        "in_memory_first_step_memory": peak_mem_model,
        "in_memory_step_s": t_mem, "streamed_step_s": t_str,
        "median_in_memory_step_s": med_mem, "median_streamed_step_s": med_str,
        "in_memory_step_cpu": cpu_mem, "streamed_step_cpu": cpu_str,
        "median_in_memory_step_cpu_s": statistics.median(sum(c.values()) for c in cpu_mem[args.warmup:]),
        "median_streamed_step_cpu_s": statistics.median(sum(c.values()) for c in cpu_str[args.warmup:]),
        "step_time_ratio": med_str / med_mem,
        "step_cpu_ratio": None,
        "final_flush_s": flush_s,
        "losses_in_memory": l_mem, "losses_streamed": l_str,
        "losses_bitwise_equal": l_mem == l_str,
        "params_bitwise_equal": not mismatched, "mismatched_params": mismatched,
        "targets": {"peak_anon_le_0.5x_weights": streamed_mem["peak_anon"] <= 0.5 * weight_bytes,
                    "step_time_ratio_le_1.5": med_str / med_mem <= 1.5},
    }
    results["step_cpu_ratio"] = results["median_streamed_step_cpu_s"] / results["median_in_memory_step_cpu_s"]
    zo.close(materialize=False)
    store.close()
    config = {"model": "Llama, TinyLlama-1.1B shape, random init", "arch": TINYLLAMA_1_1B,
              "dtype": "float32", "optimizer": "ZOSGD (MeZO) q=1", **opt_kw, "batch": args.batch,
              "seq": args.seq, "tier": "disk (mapped working copy, page cache warm)", "mode": "map",
              "threads": args.threads, "warmup": args.warmup, "steps_streamed_alone": args.steps,
              "rounds_interleaved": args.rounds}
    record = make_record("offload-tinyllama-1.1b", config, results, load_average_1min=load,
                         cpu_count=os.cpu_count())
    path = write_record(new_record_path(HERE / "results", args.name), record)
    print(f"wrote {path}; tables: python benchmarks/offload/report.py")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", default=os.environ.get("FORWARDONLY_SCRATCH", "/tmp/forwardonly-offload-bench"),
                   help="where the 4.4 GB weights file and the working copy go (not in the repository)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps of the streamed-alone memory run")
    p.add_argument("--rounds", type=int, default=5, help="timed steps of each run in the interleaved phase")
    p.add_argument("--name", default="tinyllama-1.1b", help="results/<name>.<UTC time>.json (a new file each run)")
    measure(p.parse_args())


if __name__ == "__main__":
    from forwardonly.errors import script_main

    sys.exit(script_main(main))
