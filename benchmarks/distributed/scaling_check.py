"""How well this machine scales compute-bound work from one process to two (no ZO, no communication).

Runs the forward of SmolLM2-135M's architecture (random init, 1 thread, batch 8 x 64 tokens) in one
process, then in two independent processes at once, and prints each one's median time; then the same
for a ZO-SGD step (two perturbed forwards and the update). No process talks to another, so the ratios
are what the machine allows: an upper bound for any 2-process benchmark of the same work.

    python benchmarks/distributed/scaling_check.py
"""

from __future__ import annotations

import subprocess
import sys
import time


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
    times.sort()
    what = "ZO-SGD step" if zo else "forward"
    print(f"{tag}: median {what} {times[len(times) // 2]:.3f} s", flush=True)


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--worker":
        worker(sys.argv[3], sys.argv[2] == "zo")
        return
    for kind in ("forward", "zo"):
        me = [sys.executable, __file__, "--worker", kind]
        subprocess.run(me + ["alone"], check=True)
        procs = [subprocess.Popen(me + [f"pair {i}"]) for i in range(2)]
        if any(p.wait() for p in procs):
            raise SystemExit("a worker failed")


if __name__ == "__main__":
    main()
