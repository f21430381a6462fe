"""ZO-SGD over a streamed model: dual forward, deferred update, one trip per block per step.

Where the in-memory :class:`~forwardonly.optim.ZOSGD` step runs the model twice
(at ``w + eps z`` and ``w - eps z``) and then updates every weight,
:class:`StreamedZO` makes each block travel once per step:

* **Dual forward.** The two perturbed evaluations run as two threads that take
  turns at block boundaries: the ``+eps`` one (the leader) enters block ``i``,
  which makes it resident, runs it and hands over; the ``-eps`` one runs up to
  and through the same block, releases it and hands back. Only one thread runs
  at a time, so the model's own forward (any Hugging Face decoder, masks,
  rotary embeddings, caches and all) is used unchanged, and each thread sees
  its own perturbation (:mod:`forwardonly.offload.perturb`), which makes the
  choices :class:`~forwardonly.optim._perturb.Perturbation` makes and never
  writes to a weight.
* **Deferred update.** The update of step ``t`` for parameter ``i`` is a
  function of ``(seed, t, probe, i)`` and step ``t``'s projected gradients, so
  it need not happen at step ``t``: a block applies the pending updates when it
  is next made resident, before its forwards. Resident parameters (embeddings,
  head) are updated at the end of the step. The arithmetic is the optimizer's
  own ``_apply`` restricted to those parameters, so a streamed run and an
  in-memory run end with bit-identical weights.

Supported: ZOSGD with the two-sided estimate, any ``q``, ``accum_steps``,
``sign``, ``weight_decay``, per-group learning rates. Not supported: momentum
(a parameter-sized buffer that would have to stream too) and the conservative
variant (it evaluates candidate updates, i.e. more trips per step).
"""

from __future__ import annotations

import math
import threading

import torch
from torch import nn

from ..optim.zosgd import ZOSGD
from .perturb import PerThread, ThreadPerturbation
from .store import WeightStore
from .stream import BlockStreamer


class _Aborted(Exception):
    """The other forward of a dual pair failed; unwind quietly."""


class _Turns:
    """Two forwards take turns at block boundaries; the leader (role 0) makes blocks resident."""

    def __init__(self):
        self.cond = threading.Condition()
        self.turn = 0
        self.done = [False, False]
        self.error: BaseException | None = None
        self.owed: int | None = None  # block the leader has run and the follower has not
        self.local = threading.local()

    def enter(self, i: int) -> bool:
        role = getattr(self.local, "role", None)
        if role == 1:
            if self.owed != i:
                raise RuntimeError(f"the two perturbed forwards visited different blocks ({self.owed} then {i}): "
                                   "the closure must run the same computation for every evaluation")
            return False
        if self.owed is not None:
            raise RuntimeError(f"the -eps forward never reached block {self.owed}: the closure must run the "
                               "same computation for every evaluation")
        self.owed = i
        return True

    def exit(self, i: int, release) -> None:
        role = getattr(self.local, "role", 0)
        if role == 1:
            release(i)
            self.owed = None
        self._hand_over(role)

    def _hand_over(self, role: int) -> None:
        with self.cond:
            if not self.done[1 - role]:
                self.turn = 1 - role
                self.cond.notify_all()
            self._wait(role)

    def _wait(self, role: int) -> None:
        while self.turn != role and self.error is None:
            self.cond.wait()
        if self.error is not None:
            raise _Aborted

    def start(self, role: int) -> None:
        with self.cond:
            self._wait(role)

    def finish(self, role: int, error: BaseException | None = None) -> None:
        with self.cond:
            if error is not None and self.error is None:
                self.error = error
            self.done[role] = True
            self.turn = 1 - role
            self.cond.notify_all()


class StreamedZO:
    """ZO-SGD steps on a model whose blocks stream from a :class:`WeightStore`.

    Implements the block streaming with offloading of ZO2 (Wang et al., "ZO2:
    Scalable Zeroth-Order Fine-Tuning for Extremely Large Language Models with
    Limited GPU Memory", 2025), generalised to any model with a stack of blocks.

    Args:
        model: the model (its parameters may be :func:`~forwardonly.offload.empty_model`
            placeholders); block weights come from ``store``.
        optimizer: a :class:`~forwardonly.optim.ZOSGD` over the model's parameters
            (two-sided, no momentum, not conservative).
        store: the tier holding the weights.
        device, mode, prefetch, drop_pages, capacity: see :class:`BlockStreamer`.

    ``step(closure)`` returns what ``optimizer.step(closure)`` would, and leaves
    the optimizer's state (``step``, ``forwards``, ``last_grads``, ...) as it would.
    Updates of the last step wait in :attr:`pending` until the blocks are next
    used or :meth:`flush` is called; :meth:`save` flushes first.

    Example::

        model = empty_model(lambda: AutoModelForCausalLM.from_config(config))
        store = WeightStore("model.safetensors", workdir="runs/a/offload")
        opt = ZOSGD(model.parameters(), lr=1e-6, eps=1e-3, seed=0)
        with StreamedZO(model, opt, store) as zo:
            for ids in batches:
                loss = zo.step(lambda: model(input_ids=ids, labels=ids).loss)
            zo.save("runs/a/model.safetensors")
    """

    def __init__(self, model: nn.Module, optimizer: ZOSGD, store: WeightStore, device=None,
                 mode: str | None = None, prefetch: bool = True, drop_pages: bool = True,
                 capacity: int | None = None):
        if not isinstance(optimizer, ZOSGD):
            raise TypeError(f"StreamedZO needs a ZOSGD optimizer, got {type(optimizer).__name__}")
        if not optimizer.two_sided:
            raise ValueError("StreamedZO needs the two-sided estimate (two_sided=True)")
        if optimizer.conservative:
            raise ValueError("StreamedZO does not support the conservative variant (conservative=True)")
        for g in optimizer.param_groups:
            if g["momentum"]:
                raise ValueError(f"StreamedZO does not support momentum (got momentum={g['momentum']}): "
                                 "its buffer is parameter-sized and would have to stream too")
        self.model, self.opt, self.store = model, optimizer, store
        self.streamer = BlockStreamer(model, store, device, mode, prefetch, drop_pages, capacity)
        owned = {id(p) for p in model.parameters()}
        items = list(optimizer.indexed_params())
        for i, p, _ in items:
            if id(p) not in owned:
                raise ValueError(f"optimizer parameter {i} does not belong to the model")
        self._params = {i: p for i, p, _ in items}
        self._index = {id(p): i for i, p, _ in items}
        block_of = {id(p): b.index for b in self.streamer.blocks for _, p in b.params}
        self._block_items: list[list] = [[] for _ in self.streamer.blocks]
        self._resident_items = []
        for it in items:
            b = block_of.get(id(it[1]))
            (self._resident_items if b is None else self._block_items[b]).append(it)
        self._group_index = {id(g): k for k, g in enumerate(optimizer.param_groups)}
        # (step, coeffs, hyperparameters of each group at that step) not yet applied to every block
        self.pending: list[tuple[int, list[float], list[dict]]] = []
        self._applied = [-1] * len(self.streamer.blocks)  # last step whose update each block holds
        self._pools: tuple[dict, dict] = ({}, {})  # perturbed-weight buffers of the +eps and -eps threads
        for b in self.streamer.blocks:
            if any(p is not None for p in b.module._parameters.values()):
                raise ValueError(f"block {b.index} ({type(b.module).__name__}) holds parameters directly; "
                                 "StreamedZO streams blocks whose parameters live in submodules")
        self.streamer.on_load = self._catch_up
        self.streamer.written = {b for b, items in enumerate(self._block_items) if items}
        self.streamer.attach()

    # ------------------------------------------------------------------ update
    def _apply(self, items, step: int, coeffs: list[float]) -> None:
        # The optimizer's own update, restricted to ``items``: ZOSGD._apply walks
        # indexed_params(), so shadowing it on the instance selects the parameters
        # while the arithmetic (and hence every bit of the result) stays the optimizer's.
        self.opt.indexed_params = lambda: iter(items)
        try:
            self.opt._apply(step, coeffs)
        finally:
            del self.opt.indexed_params

    def _catch_up(self, block) -> bool:
        """``on_load``: apply the updates this block has not seen yet, with the learning rate
        (and other group settings) of the step that made them, not today's."""
        todo = [u for u in self.pending if u[0] > self._applied[block.index]]
        items = self._block_items[block.index]
        for t, coeffs, groups in todo:
            if items:
                self._apply([(i, p, groups[self._group_index[id(g)]]) for i, p, g in items], t, coeffs)
            self._applied[block.index] = t
        if todo:
            done = min(self._applied)
            self.pending = [u for u in self.pending if u[0] > done]
        return bool(todo and items)

    # -------------------------------------------------------------------- step
    def _call(self, closure) -> float:
        if self.opt.accum_steps == 1:
            losses = [closure()]
        else:
            losses = [closure(i) for i in range(self.opt.accum_steps)]
        return sum(float(v) for v in losses) / len(losses)

    def _dual(self, closure, step: int, plus, minus) -> tuple[float, float]:
        """Losses at ``w + plus`` and ``w + minus``, every block resident once for both."""
        turns = _Turns()
        out: list[float | None] = [None, None]
        fused = bool(getattr(self.opt, "fused", False))
        hooks = PerThread()

        def run(role: int) -> None:
            turns.local.role = role
            pert = ThreadPerturbation(self.opt.directions, step, plus if role == 0 else minus, self._params,
                                      self._index, self._pools[role], fused)
            hooks.set(pert)
            err = None
            try:
                if role == 1:
                    turns.start(1)
                with torch.no_grad():
                    out[role] = self._call(closure)
            except _Aborted:
                pass
            except BaseException as e:  # noqa: BLE001 - handed to the main thread, raised there
                err = e
            finally:
                pert.close()
                hooks.set(None)
                turns.local.role = None
                turns.finish(role, err)

        follower = threading.Thread(target=run, args=(1,), name="forwardonly-minus-eps")
        self.streamer.gate = turns
        try:
            with hooks:
                follower.start()
                run(0)
                follower.join()
        finally:
            self.streamer.gate = None
            release = getattr(self.opt.directions, "release", None)
            if release is not None:  # cached chunks of the fused path
                release()
        if turns.error is not None or turns.owed is not None:
            self.streamer.release_all()
            if turns.error is not None:
                raise turns.error
            raise RuntimeError(f"the -eps forward never reached block {turns.owed}: the closure must run the "
                               "same computation for every evaluation")
        return out[0], out[1]

    @torch.no_grad()
    def step(self, closure):
        """One ZO-SGD step (see :meth:`forwardonly.optim.ZOOptimizer.step`); returns the loss."""
        if closure is None:
            raise ValueError("StreamedZO.step needs a closure that runs the forward pass and returns the loss")
        opt, zs = self.opt, self.opt.zo_state
        t, eps = zs["step"], opt.eps
        grads, total = [], 0.0
        for k in range(opt.q):
            lp, lm = self._dual(closure, t, [(k, eps)], [(k, -eps)])
            zs["forwards"] += 2 * opt.accum_steps
            grads.append((lp - lm) / (2 * eps))
            total += (lp + lm) / 2
        loss = total / opt.q
        if not (math.isfinite(loss) and all(math.isfinite(g) for g in grads)):
            zs["skipped"] += 1
            zs["step"] = t + 1
            zs["last_grads"] = []
            return torch.tensor(float("nan"))
        if opt.clip is not None:
            grads = [max(-opt.clip, min(opt.clip, g)) for g in grads]
        coeffs = [g / opt.q for g in grads]
        if self._resident_items:
            self._apply(self._resident_items, t, coeffs)
        self.pending.append((t, coeffs, [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]))
        zs["step"] = t + 1
        zs["last_grads"] = grads
        return torch.tensor(loss)

    # ------------------------------------------------------------- lifecycle
    @torch.no_grad()
    def flush(self) -> None:
        """Apply pending updates to every block now (one trip per block that has some)."""
        for b in self.streamer.blocks:
            if any(u[0] > self._applied[b.index] for u in self.pending):
                self.streamer.acquire(b.index)
                self.streamer.release(b.index)
        self.streamer.release_all()
        self.streamer.sync()

    def save(self, dest) -> None:
        """Write the current weights as a safetensors file at ``dest`` (atomic; streams tensor by tensor)."""
        self.flush()
        self.store.save(dest, self.streamer.current())

    def close(self, materialize: bool = True) -> None:
        """Flush, remove every hook; with ``materialize`` the model holds its weights in memory again."""
        if self.streamer._handles:
            self.flush()
            self.streamer.detach(materialize)
        self._pools = ({}, {})

    def __enter__(self) -> StreamedZO:
        return self

    def __exit__(self, *exc) -> bool:
        self.close(materialize=False)  # a model too large to hold stays streamed; call close() to get it back
        return False
