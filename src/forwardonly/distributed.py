"""Distributed zeroth-order training over :mod:`torch.distributed`, agreed with a few scalars.

A ZO step is a function of the run seed, the step number and the projected
gradients ``g_k`` (one float per probe): the directions ``z(seed, step, probe,
param_index)`` are regenerated wherever they are needed (:mod:`forwardonly.optim.perturb`).
Ranks that start from the same weights therefore never exchange parameters or
gradients; they agree on the ``g_k`` and every rank applies the same update.

Modes
-----
* ``"data"`` (data-parallel): every rank evaluates the same directions on its
  own shard of the batch, then the projected gradients and the loss are
  averaged with one ``all_reduce`` of ``q + 1`` float64 values per step
  (``reduce="grads"``, 8 bytes per probe plus 8). N ranks match one process
  with N-fold gradient accumulation up to float64 rounding of the ``g_k``.
  ``reduce="losses"`` averages every evaluation's loss instead (one 8-byte
  ``all_reduce`` per forward evaluation, so 16 bytes per two-sided probe): the
  arithmetic is then the single process's, and with two ranks and no local
  accumulation the result is bitwise identical (with more ranks or local
  accumulation the summation order differs; see ``tests/test_distributed.py``
  for the tolerances). Candidate evaluations of ZO-SGD-Cons are always reduced.
* ``"probe"`` (probe-parallel): every rank sees the same batch and evaluates
  its own probes, global probe index ``k = rank * q_local + j``, so seeds never
  collide; the ``q_local`` projected gradients (plus the loss) are
  all-gathered in rank order, which is exactly the probe order of one process
  with ``q = N * q_local``. Only scalars travel: a probe's seed is implied by
  (run seed, step, position in the gathered list).

Both work with every optimizer of :mod:`forwardonly.optim`, with
``accum_steps`` and with any choice of trainable parameters (PEFT schemes):
they are a plug-in (:class:`Parallel`) that the optimizer's step calls where it
meets the other ranks.

Example (run with ``torchrun --nproc-per-node 2 script.py``)::

    comm = init_from_env()                        # gloo on CPU, NCCL on CUDA
    torch.manual_seed(0); model = make_model()    # same init on every rank
    opt = distribute(ZOSGD(model.parameters(), lr=1e-6, seed=0), comm, mode="data")
    x, y = comm.shard(batch_x), comm.shard(batch_y)
    opt.step(lambda: loss_fn(model(x), y))
    save_checkpoint(comm, "ckpt.pt", model, opt, step=t)  # rank 0 writes

Failures
--------
Every collective has the timeout given to :func:`init_from_env` (``timeout_s``,
300 s by default; ``dist_timeout_s`` in ``forwardonly train``). A rank that dies
closes its connections, so with gloo the others fail at their next collective
at once; a rank that hangs (alive, never reaching the collective) makes the
others fail when the timeout runs out. Each survivor then takes a roll call
(:mod:`forwardonly.rollcall`, at most ``min(5 s, timeout_s)`` more) and raises a
:class:`DistributedError` naming the operation, the ranks that never reported
and whether each has exited or still runs. So a dead rank stops the others
within ``min(5, timeout_s)`` seconds (gloo) and a hung one within ``timeout_s +
min(5, timeout_s)`` seconds (``tests/test_distributed.py`` measures both; NCCL is
not tested here). ``forwardonly train`` prints the error on one line and exits
with status 1; restart the job with ``--resume``: it continues from the last
checkpoint, on any world size.

``forwardonly train --nproc N`` calls :func:`launch`, which re-executes the same
command under ``torchrun`` with ``--nproc`` removed; the training loop then
calls :func:`init_from_env`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import time
from collections.abc import Sequence

import torch

from .errors import RunError, UserError
from .optim.base import ZOOptimizer

MODES = ("data", "probe")
REDUCTIONS = ("grads", "losses")
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RunError, RuntimeError):
    """A collective failed: a peer rank died, hung past the timeout, or the group is broken."""


# --------------------------------------------------------------------------- communicator
class Comm:
    """The collectives a distributed ZO step needs, with a count of the bytes this rank sends.

    ``bytes_sent`` counts the payload this rank contributes to each collective
    (the float64 values it hands over). A ring ``all_reduce`` puts ``2 (N-1)/N``
    times that on the wire per rank and an ``all_gather`` ``N - 1`` times it; for
    ``N = 2`` both equal the payload. Without an initialised process group the
    communicator is a single process (rank 0 of 1) and sends nothing.

    Args:
        group: process group (default: the world).
        timeout_s: the collectives' timeout, quoted in error messages.
        rollcall: names the ranks that did not reach a failed collective
            (:class:`forwardonly.rollcall.RollCall`; :func:`init_from_env` makes one).
    """

    def __init__(self, group=None, timeout_s: float | None = None, rollcall=None):
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.group = group
        self.timeout_s = timeout_s
        if self.dist is None:
            self.rank, self.world_size, self.device = 0, 1, torch.device("cpu")
        else:
            self.rank = dist.get_rank(group)
            self.world_size = dist.get_world_size(group)
            nccl = dist.get_backend(group) == "nccl"
            self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        self.bytes_sent = 0
        self.collectives = 0
        self.rollcall = rollcall

    def _run(self, name: str, fn, payload: torch.Tensor, *args):
        self.bytes_sent += payload.numel() * payload.element_size()
        self.collectives += 1
        start = time.monotonic()
        try:
            fn(*args, group=self.group)
        except Exception as e:  # gloo/NCCL raise RuntimeError subclasses with backend-specific text
            failed = time.monotonic() - start
            who = (self.rollcall.absent(self.collectives) if self.rollcall is not None
                   else "a peer rank has probably died or hung")
            backend = " ".join(str(e).split())[:300]  # one line
            raise DistributedError(
                f"rank {self.rank}/{self.world_size}: {name} #{self.collectives} failed after {failed:.1f}s "
                f"(timeout {self.timeout_s}s): {who}. Restart the job to resume from the last checkpoint. "
                f"Backend said: {backend}"
            ) from e

    def all_reduce_mean(self, values: Sequence[float]) -> list[float]:
        """Element-wise mean over ranks (float64, one collective)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self._run("all_reduce", self.dist.all_reduce, t, t)
        return (t / self.world_size).tolist()

    def all_reduce_mean_(self, params: Sequence[torch.Tensor]) -> None:
        """In place: every ``p.grad`` of ``params`` becomes its mean over ranks (one collective, in the
        gradients' dtype). Only the hybrid ZO/FO optimizer needs this, for its first-order part."""
        if self.world_size == 1:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params]).to(self.device)
        self._run("all_reduce", self.dist.all_reduce, flat, flat)
        flat /= self.world_size
        start = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[start : start + n].view_as(p.grad))
            start += n

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self._run("all_reduce", self.dist.all_reduce, t, t)
        return t.tolist()

    def all_gather(self, values: Sequence[float]) -> list[list[float]]:
        """Every rank's ``values`` (same length on all ranks), in rank order."""
        if self.world_size == 1:
            return [[float(v) for v in values]]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        out = torch.empty(self.world_size * t.numel(), dtype=torch.float64, device=self.device)
        gather = getattr(self.dist, "all_gather_single", None) or self.dist.all_gather_into_tensor  # torch < 2.13
        self._run("all_gather", gather, t, out, t)
        return out.view(self.world_size, -1).tolist()

    def barrier(self) -> None:
        if self.world_size > 1:
            # a one-element all_reduce rather than dist.barrier: it honours the timeout on every backend
            self.all_reduce_sum([0.0])

    def shard(self, items):
        """This rank's contiguous block of ``items`` (length divisible by the world size).

        Rank ``r`` gets block ``r``: with ``accum_steps = a`` per rank and the
        closure's micro-batch ``i`` taken from this block, rank ``r`` evaluates
        global micro-batch ``r * a + i``, the order of one process with ``N * a``.
        """
        n = len(items)
        if n % self.world_size:
            raise ValueError(f"cannot shard {n} items over {self.world_size} ranks evenly")
        m = n // self.world_size
        return items[self.rank * m : (self.rank + 1) * m]


def init_from_env(backend: str | None = None, timeout_s: float = 300.0) -> Comm:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    Without that environment this is a single process (no group is created).
    ``backend`` defaults to NCCL when CUDA is available, else gloo.
    """
    import torch.distributed as dist

    if timeout_s <= 0:
        raise ValueError(f"Invalid timeout_s: {timeout_s}")
    if dist.is_initialized():
        return Comm(timeout_s=timeout_s)
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
            raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set; "
                            "launch with torchrun or forwardonly train --nproc N")
        return Comm()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    from .rollcall import RollCall

    calls = RollCall.from_env(dist.get_rank(), dist.get_world_size(), grace_s=min(5.0, timeout_s))
    return Comm(timeout_s=timeout_s, rollcall=calls)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- agreement between ranks
class Parallel:
    """How the ranks of a distributed ZO run agree: a plug-in of :class:`~forwardonly.optim.ZOOptimizer`.

    Made by :func:`distribute` and kept in ``optimizer.parallel``; the optimizer calls it where its step
    meets the other ranks: which probes this rank evaluates (:meth:`probes`), the losses of one
    evaluation (:meth:`reduce_sum`, :meth:`reduce_losses`), the estimate of the step (:meth:`combine`)
    and, for the hybrid ZO/FO optimizer, its first-order gradients (:meth:`before_update`).

    Args:
        comm: the communicator.
        mode: ``"data"`` (same probes, own data) or ``"probe"`` (same data, own probes).
        reduce: data mode: ``"grads"`` (reduce the step's estimate once) or ``"losses"`` (every evaluation).
        q_local: probe mode: the probes of one rank.
    """

    def __init__(self, comm: Comm, mode: str, reduce: str = "grads", q_local: int = 1):
        self.comm, self.mode, self.reduce, self.q_local = comm, mode, reduce, q_local
        self._local = False  # inside the estimate of a step whose estimate is reduced as a whole

    def probes(self, q: int) -> list[int]:
        if self.mode == "probe":
            # global probe index k = rank * q_local + j: seeds never collide, and the gathered
            # estimates are in the probe order of one process with q = N * q_local
            start = self.comm.rank * self.q_local
            return list(range(start, start + self.q_local))
        return list(range(q))

    @contextlib.contextmanager
    def estimating(self):
        self._local = self.mode == "probe" or self.reduce == "grads"
        try:
            yield
        finally:
            self._local = False

    def reduce_sum(self, total: float, micro: int) -> float:
        """The loss of one evaluation from this rank's sum over ``micro`` micro-batch losses."""
        if self._local or self.mode == "probe":
            return total / micro
        # sum then divide, as one process averages its N * a micro-batch losses
        reduced, = self.comm.all_reduce_sum([total])
        return reduced / (micro * self.comm.world_size)

    def reduce_losses(self, means: list[float], micro: int) -> list[float]:
        """The losses of one batched evaluation (this rank's means over its micro-batches)."""
        if self._local or self.mode == "probe":
            return means
        return [v / self.comm.world_size for v in self.comm.all_reduce_sum(means)]

    def combine(self, loss: float, grads: list[float], extra: dict[str, list[float]] | None = None):
        """The step's loss, projected gradients and per-probe scalars (``extra``, e.g. HiZOO's curvature:
        ``{name: [one value per probe]}``) over every rank: ``(loss, grads, extra)``."""
        extra = extra or {}
        keys, q = sorted(extra), len(grads)
        flat = [v for k in keys for v in extra[k]]
        if self.mode == "probe":
            rows = self.comm.all_gather([loss, *grads, *flat])
            # rank-major order == global probe order k = rank * q_local + j
            merged = {k: [v for r in rows for v in r[1 + q + i * q : 1 + q + (i + 1) * q]]
                      for i, k in enumerate(keys)}
            return sum(r[0] for r in rows) / len(rows), [g for r in rows for g in r[1 : 1 + q]], merged
        if self.reduce == "losses":
            return loss, grads, extra  # every evaluation was already reduced
        loss, *rest = self.comm.all_reduce_mean([loss, *grads, *flat])
        return loss, rest[:q], {k: rest[q + i * q : q + (i + 1) * q] for i, k in enumerate(keys)}

    def before_update(self, optimizer) -> None:
        """Data-parallel hybrid ZO/FO: average the first-order part's gradients over ranks."""
        if self.mode == "data" and optimizer.capabilities.first_order:
            fo = [p for p, _ in optimizer.fo_params() if p.grad is not None]
            if fo:
                self.comm.all_reduce_mean_(fo)


def distribute(optimizer: ZOOptimizer, comm: Comm, mode: str = "data", reduce: str = "grads") -> ZOOptimizer:
    """Make ``optimizer`` (any :class:`ZOOptimizer`) agree with the other ranks of ``comm``.

    The object is kept (its class, state, parameter groups and ``state_dict`` are unchanged); its
    ``parallel`` plug-in is set (:class:`Parallel`). In probe mode the optimizer's ``q`` is the probes
    per rank and becomes ``q * world_size`` overall.

    Args:
        optimizer: a ZO optimizer built with the same arguments on every rank.
        comm: from :func:`init_from_env`.
        mode: ``"data"`` (default) or ``"probe"``.
        reduce: data mode only: ``"grads"`` (default; one all-reduce of q+1 float64 per step) or
            ``"losses"`` (one all-reduce per evaluation; the single process's arithmetic).

    Every optimizer of :data:`forwardonly.optim.OPTIMIZERS` works in both modes. The hybrid
    ZO/FO optimizer (``zo-sgd-hybrid``) is the one that sends more than scalars: in data mode
    its first-order part's gradients are averaged over ranks too (one all-reduce of those
    parameters' size per step); in probe mode every rank computes the same first-order
    gradient on the shared batch and nothing extra is sent. The bytes per step of every
    optimizer, mode and ``q`` are tabled in ``benchmarks/distributed/README.md`` ("Bytes per
    rank per step") and tested in ``tests/test_distributed.py``.
    """
    from .optim.forward_grad import ForwardGrad

    if not isinstance(optimizer, ZOOptimizer):
        raise TypeError(f"distribute needs a ZOOptimizer, got {type(optimizer).__name__}")
    if optimizer.parallel is not None:
        raise ValueError("optimizer is already distributed")
    if mode not in MODES:
        raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
    if reduce not in REDUCTIONS:
        raise ValueError(f"Invalid reduce: {reduce!r} (expected one of {REDUCTIONS})")
    if mode == "data" and isinstance(optimizer, ForwardGrad):
        reduce = "grads"  # ForwardGrad's g_k are means of per-batch tangents: reducing them is exact
    optimizer.parallel = Parallel(comm, mode, reduce, q_local=optimizer.q)
    if mode == "probe":
        optimizer.q = optimizer.q * comm.world_size
    optimizer.comm = comm
    return optimizer


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(comm: Comm, path, model: torch.nn.Module, optimizer: ZOOptimizer, **extra) -> None:
    """Rank 0 writes a checkpoint directory (:mod:`forwardonly.checkpoint`, atomically: every weight of the
    model, the optimizer state and ``extra``); every rank waits until it is on disk.

    Weights and optimizer state are replicated on every rank, so one copy
    resumes on any world size. Data-parallel: N ranks with accumulation ``a``
    continue exactly as one process with ``N * a`` would. Probe-parallel: the
    total probe count is ``N * q_local``; keep it when changing N to continue
    the same trajectory.
    """
    from . import checkpoint

    if comm.rank == 0:
        checkpoint.save(path, model, optimizer, {"world_size": comm.world_size, "extra": extra},
                        state=checkpoint.all_weights(model))
    comm.barrier()


def load_checkpoint(path, model: torch.nn.Module, optimizer: ZOOptimizer | None = None) -> dict:
    """Load a checkpoint of :func:`save_checkpoint` on any rank; returns its ``extra``."""
    from . import checkpoint

    trainer = checkpoint.load(path, model, optimizer)
    return trainer["extra"]


# --------------------------------------------------------------------------- launcher
def strip_nproc(argv: Sequence[str]) -> tuple[int | None, list[str]]:
    """Split ``--nproc N`` / ``--nproc=N`` out of ``argv``."""
    out, nproc, it = [], None, iter(argv)
    for a in it:
        if a == "--nproc":
            a = "--nproc=" + next(it, "")
        if a.startswith("--nproc="):
            value = a.split("=", 1)[1]
            if not value.isdigit() or int(value) < 1:
                raise UserError(f"Invalid --nproc: {value!r} (expected a positive integer)")
            nproc = int(value)
        else:
            out.append(a)
    return nproc, out


def torchrun_command(nproc: int, argv: Sequence[str], module: str = "forwardonly.cli.main") -> list[str]:
    """The torchrun command line that runs ``python -m module argv`` on ``nproc`` local processes."""
    if not isinstance(nproc, int) or nproc < 1:
        raise UserError(f"Invalid --nproc: {nproc!r} (expected a positive integer)")
    _, rest = strip_nproc(argv)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--max-restarts=0", "-m", module, *rest]


def launch(nproc: int, argv: Sequence[str]) -> None:
    """Replace this process with torchrun running ``forwardonly <argv>`` (minus ``--nproc``) on ``nproc`` ranks.

    Returns without doing anything when ``nproc == 1`` or when this process is
    already a torchrun rank (``WORLD_SIZE`` is set), so ``forwardonly train``
    can call it first thing::

        distributed.launch(args.nproc, sys.argv[1:])   # execs torchrun, or returns in a rank
        comm = distributed.init_from_env()
    """
    cmd = torchrun_command(nproc, argv)
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
