"""``forwardonly train --nproc 2``: torchrun on 2 CPU processes (gloo) matches one process."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file


def _train(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd / "src")}
    return subprocess.run([sys.executable, "-m", "forwardonly.cli.main", "train", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_two_ranks_match_one_process_with_twofold_accumulation(ov, tiny_dir, tmp_path, request):
    root = request.config.rootpath
    common = ov("steps=4", "optim.lr=1e-3", "test=false", "validate=false")
    single = _train([*common, "batch_size=2", "accum_steps=2", f"out_dir={tmp_path / 'one'}"], root)
    assert single.returncode == 0, single.stderr[-2000:]
    dist = _train(["--nproc", "2", *common, "batch_size=4", "accum_steps=1", f"out_dir={tmp_path / 'two'}"], root)
    assert dist.returncode == 0, dist.stderr[-2000:]
    summary = json.loads(dist.stdout[dist.stdout.index("{"):])
    assert summary["world_size"] == 2
    # q=1, two-sided: one all-reduce of (projected gradient, loss) = 16 bytes per step
    assert summary["bytes_sent_per_rank"] == 4 * 16
    a = load_file(str(tmp_path / "one" / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoint" / "trainable.safetensors"))
    for name in a:  # the g_k are averaged in float64 in another order: a few ulps at most
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    log_a = json.loads((tmp_path / "one" / "seedlog.json").read_text())["entries"]
    log_b = json.loads((tmp_path / "two" / "seedlog.json").read_text())["entries"]
    for ea, eb in zip(log_a, log_b, strict=True):
        assert ea["grads"] == [pytest_approx(g) for g in eb["grads"]]


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-9, abs=1e-12)
