"""ZO-SGD over a streamed model: dual forward, deferred update, one trip per block per step.

Where the in-memory :class:`~forwardonly.optim.ZOSGD` step runs the model twice
(at ``w + eps z`` and ``w - eps z``) and then updates every weight,
:class:`StreamedZO` makes each block travel once per step:

* **Dual forward** (:class:`DualEvaluator`, the optimizer's evaluator while
  streaming). The two perturbed evaluations run as two threads that take
  turns at block boundaries: the ``+eps`` one (the leader) enters block ``i``,
  which makes it resident, runs it and hands over; the ``-eps`` one runs up to
  and through the same block, releases it and hands back. Only one thread runs
  at a time, so the model's own forward (any Hugging Face decoder, masks,
  rotary embeddings, caches and all) is used unchanged, and each thread enters
  its own :class:`~forwardonly.optim.perturb.Perturbation` (the engine's hooks
  dispatch per thread), which never writes to a weight.
* **Deferred update** (:class:`BlockDeferral`, the optimizer's deferral while
  streaming). The update of step ``t`` for parameter ``i`` is a function of
  ``(seed, t, probe, i)``, step ``t``'s projected gradients and the group's
  hyperparameters at ``t``, so it need not happen at step ``t``: a block
  applies its pending updates when it is next made resident, before its
  forwards. Resident parameters (embeddings, head) are updated at the end of
  the step. The arithmetic is the optimizer's own per-parameter update, so a
  streamed run and an in-memory run end with bit-identical weights.

The optimizer's own ``step`` runs the step: streaming only supplies the evaluator
and the deferral, and takes them back on :meth:`StreamedZO.close`.

Supported: ZOSGD with the two-sided estimate, any ``q``, ``accum_steps``,
``sign``, ``weight_decay``, per-group learning rates. Not supported: momentum
(a parameter-sized buffer that would have to stream too) and the conservative
variant (it evaluates candidate updates, i.e. more trips per step).
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from ..optim.base import Deferral
from ..optim.evaluate import Evaluator
from ..optim.perturb import Perturbation
from ..optim.zosgd import ZOSGD
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


class DualEvaluator(Evaluator):
    """The evaluator of a streamed model: a step's two points as two threads through each block once.

    Points come in pairs (a two-sided probe); anything else is evaluated one point at a time, each
    block travelling once per point.
    """

    def __init__(self, zo: StreamedZO):
        self.zo = zo
        self._pools: tuple[dict, dict] = ({}, {})  # perturbed-weight buffers of the +eps and -eps threads

    def losses(self, opt, closure, step, points, scales=None) -> list[float]:
        if len(points) != 2:
            return [self._single(opt, closure, step, terms, scales) for terms in points]
        return list(self._dual(opt, closure, step, points, scales))

    def _single(self, opt, closure, step, terms, scales) -> float:
        with Perturbation(opt.perturbed_items(), opt.directions, step, terms, scales,
                          fused=opt.directions.blockwise, pool=self._pools[0]):
            return opt._call(closure)

    def _dual(self, opt, closure, step: int, points, scales) -> tuple[float, float]:
        """Losses at ``w + points[0]`` and ``w + points[1]``, every block resident once for both."""
        turns = _Turns()
        out: list[float | None] = [None, None]
        items = opt.perturbed_items()

        def run(role: int) -> None:
            turns.local.role = role
            err = None
            try:
                if role == 1:
                    turns.start(1)
                with torch.no_grad(), Perturbation(items, opt.directions, step, points[role], scales,
                                                   fused=opt.directions.blockwise, pool=self._pools[role]):
                    out[role] = opt._call(closure)
            except _Aborted:
                pass
            except BaseException as e:  # noqa: BLE001 - handed to the main thread, raised there
                err = e
            finally:
                turns.local.role = None
                turns.finish(role, err)

        follower = threading.Thread(target=run, args=(1,), name="forwardonly-minus-eps")
        streamer = self.zo.streamer
        streamer.gate = turns
        try:
            follower.start()
            run(0)
            follower.join()
        finally:
            streamer.gate = None
            opt.directions.release()  # cached chunks of the fused path
        if turns.error is not None or turns.owed is not None:
            streamer.release_all()
            if turns.error is not None:
                raise turns.error
            raise RuntimeError(f"the -eps forward never reached block {turns.owed}: the closure must run the "
                               "same computation for every evaluation")
        return out[0], out[1]


class BlockDeferral(Deferral):
    """The deferral of a streamed model: block parameters' updates wait for the block's next residency."""

    def __init__(self, opt, zo: StreamedZO):
        super().__init__(opt, lambda index: index in zo._block_of)
        self.zo = zo

    def fold(self, index: int):
        return None  # settled on arrival (``on_load``), before any forward reads the block

    def add(self, index: int, entry: tuple) -> None:
        if index in self.entries:  # the block was not used since its last update: bring it, settle, go on
            b = self.zo._block_of[index]
            self.zo.streamer.acquire(b)
            self.zo.streamer.release(b)
        self.entries[index] = entry

    def settle_all(self) -> None:
        """Bring every block with pending updates, settle them there (one trip per such block)."""
        zo = self.zo
        for b in zo.streamer.blocks:
            if any(zo._block_of[i] == b.index for i in self.entries):
                zo.streamer.acquire(b.index)  # on_load settles the block's updates
                zo.streamer.release(b.index)
        zo.streamer.release_all()
        zo.streamer.sync()


class StreamedZO:
    """ZO-SGD steps on a model whose blocks stream from a :class:`WeightStore`.

    Implements the block streaming with offloading of ZO2 (Wang et al., "ZO2:
    Scalable Zeroth-Order Fine-Tuning for Extremely Large Language Models with
    Limited GPU Memory", 2025), generalised to any model with a stack of blocks.
    A hook object with a reversible lifecycle: constructing it attaches the streamer
    and gives the optimizer its streamed evaluator and deferral; :meth:`close` takes
    them back.

    Args:
        model: the model (its parameters may be :func:`~forwardonly.offload.empty_model`
            placeholders); block weights come from ``store``.
        optimizer: a :class:`~forwardonly.optim.ZOSGD` over the model's parameters
            (two-sided, no momentum, not conservative).
        store: the tier holding the weights.
        device, mode, prefetch, drop_pages, capacity: see :class:`BlockStreamer`.

    ``step(closure)`` is ``optimizer.step(closure)``. Updates of the last step wait in
    the optimizer's deferral until the blocks are next used or :meth:`flush` is called;
    :meth:`save` flushes first.

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
        if not (isinstance(optimizer, ZOSGD) and optimizer.capabilities.streams):
            raise TypeError(f"StreamedZO needs a ZOSGD optimizer, got {type(optimizer).__name__}")
        if not optimizer.two_sided:
            raise ValueError("StreamedZO needs the two-sided estimate (two_sided=True)")
        if optimizer.conservative:
            raise ValueError("StreamedZO does not support the conservative variant (conservative=True)")
        if (optimizer.paired or optimizer.defer_update or optimizer.parallel is not None
                or optimizer.auto is not None):
            raise ValueError("StreamedZO runs its own dual forward and deferred update: build the optimizer "
                             "without paired, defer_update, lr='auto' or distribute")
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
        block_of = {id(p): b.index for b in self.streamer.blocks for _, p in b.params}
        self._block_of = {i: block_of[id(p)] for i, p, _ in items if id(p) in block_of}
        self._block_params = [[i for i, b in self._block_of.items() if b == blk.index] for blk in self.streamer.blocks]
        for b in self.streamer.blocks:
            if any(p is not None for p in b.module._parameters.values()):
                raise ValueError(f"block {b.index} ({type(b.module).__name__}) holds parameters directly; "
                                 "StreamedZO streams blocks whose parameters live in submodules")
        self.streamer.on_load = self._catch_up
        self.streamer.written = {b for b, params in enumerate(self._block_params) if params}
        self.streamer.attach()
        self._saved = (optimizer.evaluator, optimizer.deferral)
        optimizer.evaluator, optimizer.deferral = DualEvaluator(self), BlockDeferral(optimizer, self)

    def _catch_up(self, block) -> bool:
        """``on_load``: apply the updates this block has not seen yet (with the hyperparameters of the
        step that made them), before any forward uses it."""
        deferral = self.opt.deferral
        todo = [i for i in self._block_params[block.index] if i in deferral]
        for i in todo:
            deferral.settle(i)
        return bool(todo)

    @property
    def pending(self) -> BlockDeferral:
        """The updates waiting for their block's next trip (empty, hence false, when there are none)."""
        return self.opt.deferral

    @torch.no_grad()
    def step(self, closure):
        """One ZO-SGD step (see :meth:`forwardonly.optim.ZOOptimizer.step`); returns the loss."""
        if closure is None:
            raise ValueError("StreamedZO.step needs a closure that runs the forward pass and returns the loss")
        return self.opt.step(closure)

    # ------------------------------------------------------------- lifecycle
    @torch.no_grad()
    def flush(self) -> None:
        """Apply pending updates to every block now (one trip per block that has some)."""
        self.opt.flush()

    def save(self, dest) -> None:
        """Write the current weights as a safetensors file at ``dest`` (atomic; streams tensor by tensor)."""
        self.flush()
        self.store.save(dest, self.streamer.current())

    def close(self, materialize: bool = True) -> None:
        """Flush, remove every hook, give the optimizer its own evaluator and deferral back; with
        ``materialize`` the model holds its weights in memory again."""
        if self.streamer._handles:
            self.flush()
            self.streamer.detach(materialize)
        if self._saved is not None:
            self.opt.evaluator, self.opt.deferral = self._saved
            self._saved = None

    def __enter__(self) -> StreamedZO:
        return self

    def __exit__(self, *exc) -> bool:
        self.close(materialize=False)  # a model too large to hold stays streamed; call close() to get it back
        return False
