"""Throughput of distributed ZO on SmolLM2-135M: 1 process versus N, one thread each.

    PYTHONPATH=src python benchmarks/distributed/run.py                     # measure -> a new results/*.json
    PYTHONPATH=src python benchmarks/distributed/run.py --report results/smollm2-data.json  # table only

Every configuration starts ``torchrun --standalone --nproc-per-node N`` on this
file; each rank builds SmolLM2-135M at random init from its config (the weights
do not change the cost of a forward), runs ZO-SGD (MeZO, q=1) on its own
``batch x seq`` random tokens (data-parallel) or on shared tokens with its own
probes (probe-parallel), and times every step. The first ``warmup`` steps are
discarded; the step time of a run is the median over steps of the slowest
rank. Throughput is tokens per second for data-parallel (N times the tokens of
one process per step) and probes per second for probe-parallel. ``bytes_per_step``
is the payload one rank hands to collectives per step (see
:class:`forwardonly.distributed.Comm`). Process counts are interleaved
(1, 2, 1, 2, ...) so that load from elsewhere on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMOLLM2_135M = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True,
                "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 100000.0}
LABEL_WORDS = (4467, 2657)  # two token ids standing in for a task's label words (any two cost the same)


def worker(args) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from forwardonly import distributed as fd
    from forwardonly.optim import ZOSGD

    torch.set_num_threads(1)
    comm = fd.init_from_env(timeout_s=600.0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).eval()
    opt = fd.distribute(ZOSGD(model.parameters(), lr=1e-6, eps=1e-3, seed=0, q=1), comm, mode=args.mode)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (comm.world_size * args.batch, args.seq), generator=g)
    if args.mode == "data":
        ids = comm.shard(ids)
    else:
        ids = ids[: args.batch]

    if args.loss == "lm":
        def closure():
            return model(input_ids=ids, labels=ids).loss
    else:
        # the label-word objective of forwardonly's classification tasks (tasks.objectives.LabelWords):
        # last position's logits only, cross-entropy over two label words
        label_ids = torch.tensor(LABEL_WORDS)
        target = torch.randint(0, len(label_ids), (ids.shape[0],), generator=g)

        def closure():
            logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
            return torch.nn.functional.cross_entropy(logits[:, label_ids], target)

    times, cpu, sent = [], [], []
    comm.barrier()
    for t in range(args.warmup + args.steps):
        before = comm.bytes_sent
        start, start_cpu = time.perf_counter(), time.process_time()
        opt.step(closure)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        sent.append(comm.bytes_sent - before)
    # the slowest rank sets the pace; one gather of the per-step times (outside the timed steps)
    rows = comm.all_gather(times[args.warmup:] + cpu[args.warmup:])
    if comm.rank == 0:
        n = args.steps
        slowest = [max(col) for col in zip(*(r[:n] for r in rows))]
        slowest_cpu = [max(col) for col in zip(*(r[n:] for r in rows))]
        Path(args.worker).write_text(json.dumps({
            "step_s": slowest, "median_step_s": statistics.median(slowest),
            "median_step_cpu_s": statistics.median(slowest_cpu),
            "bytes_per_step": statistics.median(sent[args.warmup:]),
        }))
    fd.shutdown()


def run_one(nproc: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--max-restarts=0", __file__, "--worker", str(out), "--mode", args.mode,
               "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--loss", args.loss]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def measure(args) -> None:
    from forwardonly.bench.record import make_record, new_record_path, refuse_existing, write_record

    refuse_existing(args.out)  # before the runs: records are never overwritten
    runs: dict[int, list[dict]] = {n: [] for n in args.nproc}
    load = [os.getloadavg()[0]]
    for rep in range(args.repeats):
        for n in args.nproc:
            r = run_one(n, args)
            runs[n].append(r)
            load.append(os.getloadavg()[0])
            print(f"repeat {rep} nproc {n}: median step {r['median_step_s']:.3f}s, "
                  f"{r['bytes_per_step']:.0f} bytes/step, load {load[-1]:.2f}", flush=True)
    results = {}
    for n, rs in runs.items():
        step = statistics.median(r["median_step_s"] for r in rs)
        step_cpu = statistics.median(r["median_step_cpu_s"] for r in rs)
        work = n * args.batch * args.seq if args.mode == "data" else n  # tokens or probes per step
        results[str(n)] = {"median_step_s": step, "throughput": work / step,
                           "median_step_cpu_s": step_cpu, "throughput_if_uncontended": work / step_cpu,
                           "unit": "tokens/s" if args.mode == "data" else "probes/s",
                           "bytes_per_step_per_rank": rs[0]["bytes_per_step"],
                           "step_s_per_repeat": [r["median_step_s"] for r in rs]}
    base = results[str(min(args.nproc))]["throughput"]
    base_cpu = results[str(min(args.nproc))]["throughput_if_uncontended"]
    for r in results.values():
        r["speedup"] = r["throughput"] / base
        r["speedup_if_uncontended"] = r["throughput_if_uncontended"] / base_cpu
    config = {"model": "SmolLM2-135M (random init)", "optimizer": "ZOSGD q=1 (per rank)", "mode": args.mode,
              "batch_per_rank": args.batch, "seq": args.seq, "loss": args.loss,
              "steps": args.steps, "warmup": args.warmup,
              "repeats": args.repeats, "threads_per_process": 1, "backend": "gloo"}
    record = make_record(f"distributed-smollm2-{args.mode}", config, results,
                         load_average_1min=load, cpu_count=os.cpu_count())
    path = write_record(args.out or new_record_path(HERE / "results", f"smollm2-{args.mode}"), record)
    print(f"wrote {path}")
    print(report(record))


def report(record: dict) -> str:
    c = record["config"]
    load = record["load_average_1min"]
    lines = [(f"mode={c['mode']}, loss={c.get('loss', 'lm')}, batch/rank={c['batch_per_rank']}, seq={c['seq']}, "
              f"load avg (1 min) {min(load):.1f}-{max(load):.1f} on {record['cpu_count']} CPUs"), "",
             ("| processes | step wall (s) | throughput (wall) | speedup (wall) | step CPU (s) "
              "| speedup (CPU time) | bytes sent/rank/step |"),
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in sorted(record["results"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {n} | {r['median_step_s']:.3f} | {r['throughput']:.3g} {r['unit']} | "
                     f"{r['speedup']:.2f}x | {r['median_step_cpu_s']:.3f} | {r['speedup_if_uncontended']:.2f}x "
                     f"| {r['bytes_per_step_per_rank']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("data", "probe"), default="data")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=2, help="sequences per rank per step")
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--loss", choices=("lm", "label"), default="lm",
                   help="lm: next-token loss over every position and the whole vocabulary; label: the "
                        "classification tasks' objective (last position, cross-entropy over two label words)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="result record, which must not exist (default: a new "
                                 "results/smollm2-MODE.<UTC time>.json)")
    p.add_argument("--report", help="print the table of a results JSON and exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
    elif args.report:
        print(report(json.loads(Path(args.report).read_text())))
    else:
        measure(args)


if __name__ == "__main__":
    from forwardonly.errors import script_main

    sys.exit(script_main(main))
