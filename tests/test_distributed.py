"""Distributed ZO (forwardonly.distributed) with 2 gloo processes on 127.0.0.1.

The ranks are real processes started with torchrun's environment (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT); each runs this file as a script. One
launch trains every case of CASES and saves the final weights; the tests
compare them with one process in pytest:

* data-parallel over 2 ranks == one process with accum_steps = 2 * local accum
  (same micro-batches in the same order);
* probe-parallel over 2 ranks == one process with q = 2 * local q.

Tolerances: "exact" cases must be bitwise equal (float32 weights). The others
differ only by float64 rounding of the projected gradients: (a - b) averaged
over ranks versus averages subtracted; we allow rtol = atol = 1e-6 on the
weights after STEPS steps.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # the rank processes run this file as a script
    sys.path.insert(0, str(SRC))

from forwardonly import distributed as fd
from forwardonly.optim import build_optimizer, pair_batch, pair_losses

WORLD = 2
STEPS = 12
BATCH = 32  # global batch; micro-batches are consecutive slices of it
LR = {"zo-sgd": 2e-3, "zo-sgd-mmt": 2e-3, "zo-sgd-sign": 1e-2, "zo-sgd-cons": 2e-3, "zo-adam": 1e-2,
      "forward-grad": 2e-3, "zo-sgd-block": 2e-3, "zo-sgd-sparse": 2e-3, "zo-sgd-hybrid": 2e-3, "fzoo": 1e-5,
      "hizoo": 1e-2, "hizoo-l": 1e-2, "sparse-mezo": 1e-2, "lozo": 1e-2, "lozo-m": 1e-2, "es": 1e-4,
      "cma-es": 1.0}

# id: (optimizer, mode, reduce, local accum_steps, local q, extra kwargs, bitwise equal to one process)
CASES = {
    "data-zosgd-losses": ("zo-sgd", "data", "losses", 1, 1, {}, True),
    "data-zoadam-losses": ("zo-adam", "data", "losses", 1, 1, {}, True),
    "data-zosgd-grads": ("zo-sgd", "data", "grads", 1, 2, {}, False),
    "data-zoadam-grads": ("zo-adam", "data", "grads", 1, 1, {}, False),
    "data-mmt-accum2": ("zo-sgd-mmt", "data", "losses", 2, 1, {}, False),
    "data-cons": ("zo-sgd-cons", "data", "grads", 1, 1, {}, False),
    "data-onesided": ("zo-sgd", "data", "losses", 1, 2, {"two_sided": False}, True),
    "data-forward-grad": ("forward-grad", "data", "grads", 1, 1, {}, True),
    "probe-zosgd": ("zo-sgd", "probe", "grads", 1, 1, {}, True),
    "probe-zoadam-q2": ("zo-adam", "probe", "grads", 1, 2, {}, True),
    "probe-sign-accum2": ("zo-sgd-sign", "probe", "grads", 2, 1, {}, True),
    "probe-cons-onesided": ("zo-sgd-cons", "probe", "grads", 1, 1, {"two_sided": False}, True),
    "probe-forward-grad": ("forward-grad", "probe", "grads", 1, 1, {}, True),
    "data-block-losses": ("zo-sgd-block", "data", "losses", 1, 1, {}, True),
    "probe-block": ("zo-sgd-block", "probe", "grads", 1, 1, {}, True),
    "data-sparse-grads": ("zo-sgd-sparse", "data", "grads", 1, 1, {"density": 0.5}, False),
    "probe-sparse-q2": ("zo-sgd-sparse", "probe", "grads", 1, 2, {"density": 0.5}, True),
    # hybrid ZO/FO: data-parallel also averages the first-order part's gradients (see test_hybrid_bytes)
    "data-hybrid": ("zo-sgd-hybrid", "data", "grads", 1, 1, {"fo_lr": 1e-2}, False),
    "probe-hybrid": ("zo-sgd-hybrid", "probe", "grads", 1, 1, {"fo_lr": 1e-2}, True),
    "data-hybrid-onesided-losses": ("zo-sgd-hybrid", "data", "losses", 1, 1, {"fo_lr": 1e-2, "two_sided": False},
                                    False),
    # paired evaluation: each rank's closure returns its two halves' losses; both are reduced
    "data-paired-losses": ("zo-sgd", "data", "losses", 1, 1, {"paired": True}, True),
    "data-paired-grads-accum2": ("zo-sgd", "data", "grads", 2, 1, {"paired": True}, False),
    "probe-paired": ("zo-adam", "probe", "grads", 1, 2, {"paired": True}, True),
    # FZOO: the step divides by the spread of all probes' losses, computed from the agreed g_k
    "probe-fzoo": ("fzoo", "probe", "grads", 1, 2, {}, True),
    "data-fzoo-losses": ("fzoo", "data", "losses", 1, 2, {}, True),
    "data-fzoo-paired-losses": ("fzoo", "data", "losses", 1, 2, {"paired": True}, True),
    # HiZOO: the curvature of each probe travels with its g_k (gathered or averaged)
    "probe-hizoo": ("hizoo", "probe", "grads", 1, 1, {"hessian_smooth": 1e-2, "eps": 1e-2}, True),
    "data-hizoo-grads": ("hizoo", "data", "grads", 1, 1, {"hessian_smooth": 1e-2, "eps": 1e-2}, False),
    "data-sparse-mezo-grads": ("sparse-mezo", "data", "grads", 1, 1, {"density": 0.5}, False),
    "probe-sparse-mezo": ("sparse-mezo", "probe", "grads", 1, 2, {"density": 0.5, "refresh": 3}, True),
    "data-lozo-losses": ("lozo", "data", "losses", 1, 1, {"rank": 1}, True),
    "probe-lozo-m": ("lozo-m", "probe", "grads", 1, 1, {"rank": 1, "interval": 4}, True),
    # ES: the ranks need every probe's two losses, which travel with its g_k (gathered or averaged)
    "probe-es": ("es", "probe", "grads", 1, 2, {}, True),
    "data-es-losses": ("es", "data", "losses", 1, 2, {}, True),
    "data-es-grads": ("es", "data", "grads", 1, 2, {"eps": 1e-2}, False),
    # lr="auto": calibrations and the guard read reduced losses, so every rank decides alike
    "data-auto-losses": ("zo-sgd", "data", "losses", 1, 1, {"lr": "auto"}, True),
    "data-auto-grads": ("zo-adam", "data", "grads", 1, 1, {"lr": "auto"}, False),
    "probe-auto-fzoo": ("fzoo", "probe", "grads", 1, 2, {"lr": "auto"}, True),
}
EXTRA_PER_PROBE = {"hizoo": 1, "hizoo-l": 1, "es": 2}  # scalars sent per probe beside g_k (HiZOO's curvature, ES's losses)


# --------------------------------------------------------------------------- the problem
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 8, generator=g)
    y = torch.sin(x[:, :1]) + x[:, 1:2]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return model, x, y


def closure_for(model, x, y, n_micro, paired=False):
    """closure(i) on the i-th of n_micro consecutive slices of (x, y); closure() on all of it.
    ``paired``: the slice stacked twice, and the two halves' losses (``paired=True`` optimizers)."""
    m = len(x) // n_micro

    def loss(xs, ys):
        if not paired:
            return torch.nn.functional.mse_loss(model(xs), ys)
        x2, y2 = pair_batch(xs, ys)  # stacked once per slice the evaluation asks for (2, or FZOO's q + 1)
        return pair_losses(torch.nn.functional.mse_loss(model(x2), y2, reduction="none").mean(1))

    def closure(i=None):
        if i is None:
            return loss(x, y)
        return loss(x[i * m:(i + 1) * m], y[i * m:(i + 1) * m])

    if n_micro == 1:
        return lambda: closure()
    return lambda i: closure(i)


def make_opt(model, name, accum, q, extra):
    return build_optimizer(name, model.parameters(), **{"lr": LR[name], **extra}, seed=5, q=q, accum_steps=accum)


def train_case(case: str, comm):
    """Train one case on this rank; returns (weights, bytes sent per step)."""
    name, mode, reduce, accum, q, extra, _ = CASES[case]
    model, x, y = problem()
    if mode == "data":
        x, y = comm.shard(x), comm.shard(y)
    opt = fd.distribute(make_opt(model, name, accum, q, extra), comm, mode=mode, reduce=reduce)
    closure = closure_for(model, x, y, accum, extra.get("paired", False))
    sent = comm.bytes_sent
    for _ in range(STEPS):
        opt.step(closure)
    per_step = (comm.bytes_sent - sent) / STEPS  # (before flush: lr="auto" writes its last update then)
    forwards = opt.zo_state["forwards"]
    opt.flush()
    return [p.detach().clone() for p in model.parameters()], per_step, forwards


def single_process(case: str):
    """The oracle: one process with WORLD-fold accumulation (data) or WORLD-fold probes (probe)."""
    name, mode, _, accum, q, extra, _ = CASES[case]
    model, x, y = problem()
    if mode == "data":
        accum *= WORLD
    else:
        q *= WORLD
    opt = make_opt(model, name, accum, q, extra)
    closure = closure_for(model, x, y, accum, extra.get("paired", False))
    for _ in range(STEPS):
        opt.step(closure)
    opt.flush()
    return [p.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------- rank processes
def worker(task: dict, out: Path) -> None:
    torch.set_num_threads(1)
    comm = fd.init_from_env(timeout_s=task.get("timeout_s", 30.0))
    rank = comm.rank
    if task["kind"] == "parity":
        results = {}
        for case in CASES:
            weights, per_step, forwards = train_case(case, comm)
            results[case] = {"weights": weights, "bytes_per_step": per_step, "forwards": forwards}
        torch.save(results, out / f"rank{rank}.pt")
    elif task["kind"] == "resume":
        # 3 steps, checkpoint (rank 0 writes), 3 more; the test resumes the checkpoint in 1 process
        model, x, y = problem()
        x, y = comm.shard(x), comm.shard(y)
        opt = fd.distribute(make_opt(model, "zo-adam", 1, 1, {}), comm, mode="data", reduce="losses")
        closure = closure_for(model, x, y, 1)
        for _ in range(3):
            opt.step(closure)
        fd.save_checkpoint(comm, out / "ckpt", model, opt, step=3)
        for _ in range(3):
            opt.step(closure)
        torch.save([p.detach() for p in model.parameters()], out / f"rank{rank}.pt")
    elif task["kind"] == "kill":
        model, x, y = problem()
        opt = fd.distribute(make_opt(model, "zo-sgd", 1, 1, {}), comm, mode="probe")
        closure = closure_for(model, x, y, 1)
        victim = task.get("victim", 1)
        # start in step: on a loaded machine one rank may take seconds longer to get here than the other,
        # which the short collective timeout under test would take for a hang
        import datetime

        torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=120))
        for t in range(1000):
            if rank == victim and t == 3:
                (out / "stopped_at").write_text(repr(time.time()))
                if task.get("hang"):
                    time.sleep(600)  # alive but stuck: only the collective's timeout can tell
                os._exit(3)  # die without a word, as a crashed or OOM-killed rank does
            try:
                opt.step(closure)
            except fd.DistributedError:
                (out / f"gave_up{rank}").write_text(repr(time.time()))
                raise
    fd.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(task: dict, out: Path, timeout: float = 900.0, only_rank0: bool = False):
    """Start WORLD rank processes with torchrun's environment and wait for all of them.

    Returns ``[(returncode, stderr)]`` per rank (returncode None: still running
    at ``timeout``, or after rank 0 ended with ``only_rank0``; then killed) and the seconds waited.
    """
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "task.json"
    spec.write_text(json.dumps(task))
    port = free_port()
    procs, logs = [], []
    for rank in range(WORLD):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        logs.append(out / f"rank{rank}.stderr")
        with open(logs[-1], "w") as err:
            procs.append(subprocess.Popen([sys.executable, __file__, str(spec), str(out)], env=env,
                                          stdout=subprocess.DEVNULL, stderr=err))
    start = time.monotonic()
    try:
        watched = procs[:1] if only_rank0 else procs
        while any(p.poll() is None for p in watched) and time.monotonic() - start < timeout:
            time.sleep(0.05)
    finally:
        codes = [p.poll() for p in procs]
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(c, log.read_text()) for c, log in zip(codes, logs)], time.monotonic() - start


# --------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity")
    results, _ = run_ranks({"kind": "parity"}, out)
    for rank, (code, err) in enumerate(results):
        assert code == 0, f"rank {rank} failed:\n{err}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("case", list(CASES))
def test_matches_single_process(parity, case):
    exact = CASES[case][-1]
    expected = single_process(case)
    got = parity[0][case]["weights"]
    for g, e in zip(got, expected):
        if exact:
            assert torch.equal(g, e), f"{case}: max |diff| {float((g - e).abs().max())}"
        else:
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    start = [p.detach() for p in problem()[0].parameters()]
    assert any(not torch.equal(g, s) for g, s in zip(got, start)), "the weights did not move"


@pytest.mark.parametrize("case", list(CASES))
def test_ranks_hold_identical_weights(parity, case):
    for a, b in zip(parity[0][case]["weights"], parity[1][case]["weights"]):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- bytes per step
# The table of benchmarks/distributed/README.md ("Bytes per rank per step"), with q the probes per rank.
FO_VALUES = 17  # the hybrid's first-order part on problem()'s model: the last Linear(16, 1)


def two_sided(name, extra) -> bool:
    """Whether ``name`` with ``extra`` evaluates two points per probe (its own default when not given)."""
    model = problem()[0]
    return bool(make_opt(model, name, 1, 2, extra).param_groups[0].get("two_sided", True))


def expected_bytes(name, mode, reduce, q, extra, candidates_per_step=0.0):
    """Payload one rank hands to collectives per step (float64 scalars; the hybrid's fp32 gradients)."""
    per_probe = 1 + EXTRA_PER_PROBE.get(name, 0)  # HiZOO's curvature travels with each g_k
    if mode == "probe":
        return 8 * (per_probe * q + 1)  # one all-gather of the local probes' scalars and the loss
    if name == "forward-grad":
        reduce = "grads"  # its g_k are means of per-batch tangents: always reduced as such
    if reduce == "grads":
        scalars = 8 * (per_probe * q + 1)  # one all-reduce of [loss, g_1..g_q] (and HiZOO's curvatures)
    elif name in ("hizoo", "hizoo-l"):
        scalars = 8 * (2 * q + 1)  # the unperturbed loss and two per probe
    elif two_sided(name, extra):
        scalars = 16 * q  # every evaluation's loss: two per probe (paired: one pair of losses)
    else:
        scalars = 8 * (q + 1)  # the unperturbed loss and one per probe
    if name == "zo-sgd-cons":
        scalars += 8 * candidates_per_step  # the candidates' losses (2 or 3 per step), reduced in data mode
    if name == "zo-sgd-hybrid":
        scalars += 4 * FO_VALUES  # the first-order gradients, averaged (their dtype: fp32)
        if reduce == "losses" and extra.get("two_sided", True):
            scalars += 8  # and its first-order forward's loss (one-sided: the unperturbed loss counted above)
    return scalars


def candidates(name, mode, q, extra, forwards, steps):
    """ZO-SGD-Cons's candidate evaluations per step: the forwards beyond the estimate's."""
    if name != "zo-sgd-cons":
        return 0.0
    per_estimate = 2 * q if extra.get("two_sided", True) else q + 1
    c = (forwards - per_estimate * steps) / steps
    assert 2 <= c <= 3, c  # w - lr g always; w + lr g when the first did not lower the loss
    return c


@pytest.mark.parametrize("case", [c for c, v in CASES.items() if v[5].get("lr") != "auto"])
def test_bytes_per_step_on_two_gloo_ranks(parity, case):
    """Every case of the real 2-rank launch sends what the table says; nothing else."""
    name, mode, reduce, accum, q, extra, _ = CASES[case]
    for rank in range(WORLD):
        got = parity[rank][case]
        q_run = q * (WORLD if mode == "probe" else 1)  # forwards below count this rank's own evaluations
        c = candidates(name, mode, q_run if mode == "data" else q, extra, got["forwards"] / accum, STEPS)
        assert got["bytes_per_step"] == expected_bytes(name, mode, reduce, q, extra, c), (case, got)


class _TwinBackend:
    """torch.distributed's collectives as seen by rank 0 of 2 whose peer holds the same values."""

    @staticmethod
    def all_reduce(t, group=None):
        t.mul_(2)

    @staticmethod
    def all_gather_single(out, t, group=None):
        out.copy_(t.repeat(2))


def twin_comm() -> fd.Comm:
    comm = fd.Comm()
    comm.rank, comm.world_size, comm.dist = 0, 2, _TwinBackend()
    return comm


SETTINGS = [("data", "grads", {}), ("data", "losses", {}), ("probe", "grads", {}),
            ("data", "losses", {"two_sided": False}), ("data", "losses", {"paired": True})]


@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("mode,reduce,extra", SETTINGS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={x}" for k, x in v.items()) or "default")
@pytest.mark.parametrize("name", list(LR))
def test_bytes_per_step_of_every_optimizer(name, mode, reduce, extra, q):
    """Every registered optimizer, q in {1, 2}, each mode: Comm.bytes_sent per step (rank 0 of 2, a
    stand-in backend; Comm counts the bytes itself) equals the table."""
    from forwardonly.optim import OPTIMIZERS

    assert set(LR) == set(OPTIMIZERS)  # a new optimizer needs a row here and in the table
    if not OPTIMIZERS[name].capabilities.distributes:
        pytest.skip(f"{name} runs in one process")
    if extra.get("paired") and name in ("zo-sgd-cons", "forward-grad", "zo-sgd-hybrid"):
        pytest.skip(f"{name} has no paired evaluation")
    if not extra.get("two_sided", True) and name in ("forward-grad", "es"):
        pytest.skip(f"{name} has no one- or two-sided choice")
    if name == "fzoo" and q < 2:
        pytest.skip("FZOO needs q >= 2 (the spread of its probe losses)")
    if name.startswith("hizoo") and not extra.get("two_sided", True):
        pytest.skip("HiZOO is two-sided by construction (L(w) and L(w +- eps z))")
    if name.startswith("lozo"):
        extra = {"rank": 1, **extra}  # problem()'s last layer is a 1 x 16 matrix
    model, x, y = problem()
    kw = {k: v for k, v in {"fo_lr": 1e-2, **extra}.items() if name == "zo-sgd-hybrid" or k != "fo_lr"}
    opt = fd.distribute(make_opt(model, name, 1, q, kw), twin_comm(), mode=mode, reduce=reduce)
    if name == "zo-sgd-hybrid":
        assert sum(p.numel() for p, _ in opt.fo_params()) == FO_VALUES
    closure = closure_for(model, x, y, 1, extra.get("paired", False))
    steps = 4
    for _ in range(steps):
        opt.step(closure)
    c = candidates(name, mode, q, extra, opt.zo_state["forwards"], steps) if mode == "data" else 0.0
    assert opt.comm.bytes_sent / steps == expected_bytes(name, mode, reduce, q, extra, c)


def test_probe_parallel_ranks_evaluate_their_global_probes_masks_included():
    """Rank r of a probe-parallel run evaluates global probes r * q_local + j of the run's own (masked)
    directions: the projected gradients one process computes for those probes."""
    from forwardonly.optim import ZOSGDSparse

    class RankOne:
        rank, world_size = 1, 2

    model, x, y = problem()
    closure = closure_for(model, x, y, 1)
    single = ZOSGDSparse(model.parameters(), lr=0.0, q=4, density=0.25, seed=3)
    _, every = single._estimate(closure, 0, list(range(4)))
    par = fd.Parallel(RankOne(), "probe", q_local=2)
    assert par.probes(4) == [2, 3]
    ranked = ZOSGDSparse(model.parameters(), lr=0.0, q=2, density=0.25, seed=3)
    _, mine = ranked._estimate(closure, 0, par.probes(4))
    assert mine == every[2:] and mine != every[:2]


def test_checkpoint_from_two_ranks_resumes_in_one_process(tmp_path):
    results, _ = run_ranks({"kind": "resume"}, tmp_path)
    assert all(code == 0 for code, _ in results), results
    model, x, y = problem()
    opt = make_opt(model, "zo-adam", WORLD, 1, {})
    extra = fd.load_checkpoint(tmp_path / "ckpt", model, opt)
    assert extra == {"step": 3} and opt.zo_state["step"] == 3
    closure = closure_for(model, x, y, WORLD)
    for _ in range(3):
        opt.step(closure)
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)
    for g, p in zip(got, model.parameters()):
        assert torch.equal(g, p.detach())


def stop_seconds(out: Path, survivor: int) -> float:
    """From the victim's last moment to the survivor giving up with a DistributedError."""
    return float((out / f"gave_up{survivor}").read_text()) - float((out / "stopped_at").read_text())


def test_killed_rank_stops_the_other_with_a_clear_error(tmp_path):
    """A dead rank: gloo sees the closed connection at once, then a roll call of min(5 s, timeout) names it."""
    results, _ = run_ranks({"kind": "kill", "timeout_s": 2.0}, tmp_path)
    (code0, err0), (code1, _) = results
    assert code1 == 3
    assert code0 not in (0, None)
    last = err0.strip().splitlines()[-1]
    assert "forwardonly.distributed.DistributedError: rank 0/2: " in last, last
    assert re.search(r"rank 1 \(pid \d+ on this host\) has exited\. Restart the job", last), last
    assert failed_after(err0) < 1.5  # the collective itself failed at once
    assert stop_seconds(tmp_path, 0) < 2.0 + 1.5  # roll call (2 s) plus slack


def test_hung_rank_times_out_and_is_named(tmp_path):
    """A rank alive but stuck: the collective times out (2 s), then the roll call (2 s) names it."""
    results, _ = run_ranks({"kind": "kill", "hang": True, "timeout_s": 2.0}, tmp_path,
                           only_rank0=True)
    (code0, err0), (code1, _) = results
    assert code1 is None  # still asleep when rank 0 gave up
    assert code0 not in (0, None), err0[-2000:]
    assert re.search(r"rank 1 \(pid \d+ on this host\) is still running: it hangs", err0), err0[-2000:]
    assert 1.9 <= failed_after(err0) < 4.0
    assert 3.9 <= stop_seconds(tmp_path, 0) < 2.0 + 2.0 + 1.5


def test_dead_store_host_is_named(tmp_path):
    """Without torchrun rank 0 hosts the rendezvous store: when it dies, rank 1 names it all the same."""
    results, _ = run_ranks({"kind": "kill", "victim": 0, "timeout_s": 2.0}, tmp_path)
    (code0, _), (code1, err1) = results
    assert code0 == 3 and code1 not in (0, None)
    assert "rank 1/2: " in err1 and ("rank 0 (the store's host when started without torchrun)" in err1 or "rank 0 (pid" in err1), err1[-2000:]
    assert stop_seconds(tmp_path, 1) < 2.0 + 2.0 + 1.5


def failed_after(stderr: str) -> float:
    m = re.search(r"failed after ([0-9.]+)s", stderr)
    assert m, stderr[-2000:]
    return float(m.group(1))


def test_single_process_comm_is_a_no_op():
    comm = fd.Comm()
    assert (comm.rank, comm.world_size) == (0, 1)
    assert comm.all_reduce_mean([1.5, 2.0]) == [1.5, 2.0]
    assert comm.all_gather([3.0]) == [[3.0]]
    assert comm.bytes_sent == 0
    assert comm.shard([1, 2, 3]) == [1, 2, 3]
    model = problem()[0]
    opt = fd.distribute(make_opt(model, "zo-sgd", 1, 1, {}), comm, mode="probe")
    assert opt.q == 1 and type(opt).__name__ == "ZOSGD" and opt.parallel.mode == "probe"


def test_arguments_are_validated():
    model, _, _ = problem()
    opt = make_opt(model, "zo-sgd", 1, 1, {})
    with pytest.raises(ValueError, match="Invalid mode: 'tensor'"):
        fd.distribute(opt, fd.Comm(), mode="tensor")
    with pytest.raises(ValueError, match="Invalid reduce"):
        fd.distribute(opt, fd.Comm(), reduce="params")
    with pytest.raises(TypeError):
        fd.distribute(torch.optim.SGD(model.parameters(), lr=0.1), fd.Comm())


def test_launcher_command(monkeypatch):
    nproc, rest = fd.strip_nproc(["train", "--nproc", "2", "cfg.yaml", "lr=1e-6"])
    assert nproc == 2 and rest == ["train", "cfg.yaml", "lr=1e-6"]
    assert fd.strip_nproc(["train", "--nproc=4"]) == (4, ["train"])
    cmd = fd.torchrun_command(2, ["train", "--nproc=2", "cfg.yaml"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd
    assert cmd[-4:] == ["-m", "forwardonly.cli.main", "train", "cfg.yaml"]
    with pytest.raises(fd.UserError, match="Invalid --nproc: 'x'"):
        fd.strip_nproc(["--nproc", "x"])
    assert fd.launch(1, ["train"]) is None  # one process: nothing to launch
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert fd.launch(2, ["train", "--nproc", "2"]) is None  # already a torchrun rank


if __name__ == "__main__":  # a rank process of run_ranks
    worker(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
