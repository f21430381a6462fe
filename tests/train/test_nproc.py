"""``forwardonly train --nproc 2``: torchrun on 2 CPU processes (gloo) matches one process."""

import json
import os
import subprocess
import sys

import pytest
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


def _rank_pid(rank: int, marker: str) -> int | None:
    """The pid of torchrun's rank ``rank`` whose command line holds ``marker`` (Linux /proc)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if marker.encode() in cmd and f"RANK={rank}".encode() in env and b"forwardonly.cli.main" in cmd:
            return int(d)
    return None


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the rank processes through /proc")
@pytest.mark.parametrize("fault", ["dies", "hangs"])
def test_a_lost_rank_stops_the_run_with_an_error_naming_it(ov, tmp_path, request, fault):
    """`forwardonly train --nproc 2 dist_timeout_s=3`: rank 1 is SIGKILLed (dies) or SIGSTOPped (hangs)
    mid-training. Dies: torchrun sees the exit and stops rank 0 at once, naming rank 1 as the root cause.
    Hangs: rank 0's collective times out (3 s), its roll call (3 s) finds rank 1 still running, and it
    stops with one line naming rank 1."""
    import re
    import signal
    import time

    root, run_dir = request.config.rootpath, tmp_path / "run"
    args = ov("steps=100000", "optim.lr=1e-3", "test=false", "validate=false", "log_every=1",
              "dist_timeout_s=3", f"out_dir={run_dir}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")}
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "forwardonly.cli.main", "train", "--no-progress", "--nproc", "2",
                                 *args], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=root)
    victim = None
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()[-3000:]
            time.sleep(0.2)
        victim = _rank_pid(1, str(run_dir))
        assert victim is not None
        os.kill(victim, signal.SIGKILL if fault == "dies" else signal.SIGSTOP)
        t0 = time.monotonic()
        if fault == "dies":
            pattern = re.compile(r"Root Cause \(first observed failure\):\s*\[0\]:.*?rank\s*: 1 \(local_rank: 1\)"
                                 r"\s*exitcode\s*: -9", re.DOTALL)
        else:
            pattern = re.compile(r"^forwardonly train: error: rank 0/2: \S+ #\d+ failed after [0-9.]+s \(timeout "
                                 rf"3.0s\): rank 1 \(pid {victim} on this host\) is still running: it hangs\. ", re.MULTILINE)
        while not pattern.search(err_path.read_text()) and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        named_after = time.monotonic() - t0
        if fault == "hangs":
            os.kill(victim, signal.SIGKILL)  # found: no need to wait for torchrun to give up on it
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        if victim is not None:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = err_path.read_text()
    assert proc.returncode != 0
    assert pattern.search(text), text[-3000:]
    print(f"rank 1 {fault}: named {named_after:.1f}s after the fault")
    assert named_after < (0 if fault == "dies" else 3 + 3) + 3, named_after
