"""Peak training memory above the weights, local methods versus backprop, at batch 1024.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/local_learning/memory.py
    PYTHONPATH=src python benchmarks/local_learning/memory.py --only cnv-bp,cnv-noprop --out memory-conv.json

For each experiment file and each architecture (the benchmark MLP and a deeper
one; a conv experiment keeps its conv blocks and gets these dense layers after
them; NoProp's depth is its number of blocks, 2 and 10) a fresh process builds the model, runs one warm-up step at batch 1024 (so
that optimizer state and lazily created buffers exist), then measures three more
steps with :class:`forwardonly.bench.measure.PeakMemory`. "Above the weights" is
the kernel's peak resident set during those steps minus the resident set just
before them (weights, optimizer state, the batch and the runtime are all in the
baseline). glibc is told to serve every allocation over 64 KiB with ``mmap`` so
freed activations go back to the kernel instead of hiding in a malloc arena.
:class:`forwardonly.local.memcheck.SavedTensorMeter` gives the allocator-free
view: the peak bytes autograd held for backward at any one time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARCHS = {"mlp-2x1000": [1000, 1000], "mlp-6x2000": [2000] * 6}
# NoProp's depth is its chain of blocks: the same two columns hold 2 and 10 blocks
NOPROP_BLOCKS = {"mlp-2x1000": 2, "mlp-6x2000": 10}
BATCH = 1024


def overrides(path: str, arch: str) -> list[str]:
    from forwardonly.config import load_config
    from forwardonly.local.config import LocalConfig

    if load_config(LocalConfig, path).algo == "noprop":
        return [f"noprop.blocks={NOPROP_BLOCKS[arch]}"]
    return [f"hidden={ARCHS[arch]}"]


def measure(path: str, arch: str) -> dict:
    import gc

    import torch

    from forwardonly.bench.measure import PeakMemory
    from forwardonly.config import load_config
    from forwardonly.local import build_model
    from forwardonly.local.config import LocalConfig
    from forwardonly.local.memcheck import SavedTensorMeter

    torch.set_num_threads(1)
    over = overrides(path, arch)
    cfg = load_config(LocalConfig, path, over)
    model = build_model(cfg, 784, 10, (1, 28, 28))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, 784, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)
    model.train_step(x, y)
    gc.collect()
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with PeakMemory(interval=0.0005) as mem:
        for _ in range(3):
            model.train_step(x, y)
    with SavedTensorMeter(model) as saved:
        model.train_step(x, y)
    r = mem.result()
    return {"weights_bytes": weights, "peak_rss_above_start": r["peak_rss"] - r["start_rss"],
            "peak_anon_above_start": r["peak_anon"] - r["start_anon"],
            "autograd_saved_peak_bytes": saved.peak_bytes, "batch_size": BATCH, "overrides": over,
            "hidden": cfg.hidden, "conv": cfg.conv}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("EXPERIMENT", "ARCH"), help=argparse.SUPPRESS)
    ap.add_argument("--only", help="comma-separated experiment names")
    ap.add_argument("--out", help="file name under results/ (refused when it exists; default: memory.<UTC time>.json)")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1])))
        return 0

    from forwardonly.bench.record import make_record, new_record_path, refuse_existing, write_record

    out_path = HERE / "results" / args.out if args.out else new_record_path(HERE / "results", "memory")
    refuse_existing(out_path)  # before minutes of measuring, not after

    files = sorted((HERE / "experiments").glob("*.yaml"))
    if args.only:
        files = [f for f in files if f.stem in args.only.split(",")]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "OMP_NUM_THREADS": "1"}
    results: dict = {}
    for arch in ARCHS:
        for f in files:
            out = subprocess.run([sys.executable, __file__, "--child", str(f), arch], env=env,
                                 capture_output=True, text=True, check=True)
            results.setdefault(arch, {})[f.stem] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[arch][f.stem]
            print(f"{arch:11s} {f.stem:10s} rss+{r['peak_rss_above_start'] / 2**20:7.1f} MiB "
                  f"saved {r['autograd_saved_peak_bytes'] / 2**20:7.1f} MiB", flush=True)
    rec = make_record("local_learning/memory", {"batch_size": BATCH, "archs": ARCHS, "noprop_blocks": NOPROP_BLOCKS,
                                                "malloc_mmap_threshold": 65536}, results)
    write_record(out_path, rec)  # exclusive create: never overwrites
    return 0


if __name__ == "__main__":
    from forwardonly.errors import script_main

    sys.exit(script_main(main))
