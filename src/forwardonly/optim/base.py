"""The zeroth-order step shared by every ZO optimizer.

A ZO optimizer never calls ``backward``. Each step it evaluates the loss at perturbed points
``w +- eps * z_k`` (``k < q`` probes), turns the differences into projected gradients ``g_k``
(scalars), and updates the weights from the directions regenerated from their seeds.

Estimators (Spall 1992; Nesterov & Spokoiny 2017; MeZO, Malladi et al. 2023):

* two-sided: ``g_k = (L(w + eps z_k) - L(w - eps z_k)) / (2 eps)``, 2q forwards;
* one-sided: ``g_k = (L(w + eps z_k) - L(w)) / eps``, q + 1 forwards.

``E[g_k z_k] -> grad L`` as ``eps -> 0`` for Gaussian and Rademacher ``z``.

:meth:`ZOOptimizer.step` is a template: hold the step's random words, :meth:`~ZOOptimizer.estimate`
(its evaluation of a point is the one overridable piece, :mod:`forwardonly.optim.evaluate`), skip a
non-finite step, clip, :meth:`~ZOOptimizer.apply_grads`. A subclass supplies the update of one
parameter (:meth:`~ZOOptimizer._update`) and, where it has one, its own estimate. Plug-ins, all
optional: an ``evaluator`` (block streaming), a ``parallel`` agreement between ranks
(:func:`forwardonly.distributed.distribute`) and a ``deferral`` of updates (``defer_update``, streaming).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable

import torch

from . import signal
from .autolr import AutoStep
from .deferral import Deferral
from .evaluate import Evaluator, as_loss, call_closure, check_closure, slice_losses
from .options import Capabilities, ZOConfig
from .perturb import KINDS, Directions

# Capabilities, ZOConfig (options.py) and Deferral (deferral.py) are part of the step's interface: the
# optimizer files import them from here.
__all__ = ["Capabilities", "Deferral", "ZOConfig", "ZOOptimizer", "indexed"]

ZO_KEY = "zo"
IMPLS = ("auto", "torch", "plain")
STEP_OPTIONS = ("q", "two_sided", "accum_steps", "clip", "paired")
"""Hyperparameters of the step as a whole: kept in every parameter group, equal in all of them."""
CALLING = ("accum_steps", "paired")
"""Options that say how the closure is called: a loaded state keeps the live optimizer's (a checkpoint
resumes on any world size and accumulation)."""


def indexed(param_groups):
    """``(param_index, param, group)`` for the trainable parameters of ``param_groups``; the index (which keys
    a parameter's directions) counts every parameter, trainable or not."""
    i = 0
    for group in param_groups:
        for p in group["params"]:
            if p.requires_grad:
                yield i, p, group
            i += 1


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


class ZOOptimizer(torch.optim.Optimizer):
    """Base class of the zeroth-order optimizers (see :mod:`forwardonly.optim.base`).

    Args (estimator options, shared by all subclasses; see :class:`ZOConfig`):
        eps: perturbation scale (default 1e-3); per parameter group.
        q: probes (directions) per step (default 1).
        two_sided: two-sided (default) or one-sided differences.
        direction: ``"rademacher"`` (default) or ``"gaussian"``.
        seed: run seed; directions are a pure function of (seed, step, probe, parameter).
        accum_steps: micro-batches per step sharing the same directions; the closure is then called
            as ``closure(i)`` for ``i < accum_steps`` and the losses are averaged (default 1: ``closure()``).
        clip: if set, projected gradients are clipped to ``[-clip, clip]``.
        paired: evaluate the points of a call in one closure call: the closure runs the model on its
            batch stacked once per point (:func:`forwardonly.optim.pair_batch`) and returns each
            slice's loss (:func:`forwardonly.optim.pair_losses`). For a two-sided probe: ``L(w + eps z)``
            for the first half and ``L(w - eps z)`` for the second. The estimate is the same; a step reads
            the weights once less per probe and pays the forward's fixed costs once, for the activations
            of the stacked batch (default False; trades memory for time). A call counts one forward per point.
        impl: ``"auto"`` (default: the native kernel and the fused linear/embedding paths where they
            apply), ``"torch"`` (fused paths, torch kernels only) or ``"plain"`` (every module gets a whole
            perturbed copy). The values are the same in all three; ``FORWARDONLY_NATIVE=0`` in the
            environment also keeps ``"auto"`` off the native kernel.
        auto_holdout: with ``lr="auto"``, each calibration's line search (and a check of the first one's
            bracket) is measured on the next step's batch (:mod:`forwardonly.optim.autolr`); an error
            without ``lr="auto"``.

    Hyperparameters live in the parameter groups and round-trip through ``state_dict``; the step-level
    ones (``q``, ``two_sided``, ``accum_steps``, ``clip``, ``paired``) must be equal in every group.
    ``accum_steps`` and ``paired`` say how the closure is called, so loading a state keeps this
    optimizer's own (a checkpoint resumes on any world size and accumulation).
    ``eps`` may differ per group: each group is perturbed by its own ``eps``, the projected gradient is
    measured in units of the first group's, and each group's update is rescaled to its own.

    ``step(closure)`` runs forwards only and returns the loss at the unperturbed point (two-sided: the
    mean of the two perturbed losses). A non-finite loss skips the step: the weights stay exactly as they
    were and ``state["zo"]["skipped"]`` counts it.
    """

    capabilities = Capabilities()

    def __init__(self, params, defaults: dict, *, eps: float = 1e-3, q: int = 1, two_sided: bool = True,
                 direction: str = "rademacher", seed: int = 0, accum_steps: int = 1,
                 clip: float | None = None, paired: bool = False, impl: str = "auto", mask=None,
                 auto_holdout: bool = False):
        lr = defaults.get("lr")
        auto = isinstance(lr, str) and lr == "auto"
        _check(not auto_holdout or auto, f"Invalid auto_holdout={auto_holdout!r}: it is an option of lr='auto' "
                                         f"(lr is {lr!r})")
        if auto:
            _check(self.capabilities.auto_lr, f"Invalid lr='auto': {type(self).__name__} does not take it")
            defaults = {**defaults, "lr": 0.0}  # the plug-in sets it every step
            lr = 0.0
        _check(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr >= 0.0,
               f"Invalid learning rate: {lr!r} (a number >= 0, or 'auto')")
        wd = defaults.get("weight_decay", 0.0)
        _check(wd >= 0.0, f"Invalid weight_decay value: {wd}")
        _check(eps > 0.0 and math.isfinite(eps), f"Invalid eps (perturbation scale): {eps}")
        _check(isinstance(q, int) and q >= 1, f"Invalid number of probes q: {q}")
        _check(direction in KINDS, f"Invalid direction: {direction!r} (expected one of {KINDS})")
        _check(isinstance(accum_steps, int) and accum_steps >= 1, f"Invalid accum_steps: {accum_steps}")
        _check(clip is None or clip > 0.0, f"Invalid clip: {clip}")
        _check(isinstance(seed, int), f"Invalid seed: {seed!r}")
        _check(impl in IMPLS, f"Invalid impl: {impl!r} (expected one of {IMPLS})")
        _check(not paired or two_sided or not self._pairs_two_sided_only,
               f"Invalid paired={paired!r}: pairing evaluates the two sides of a two-sided estimate together "
               f"(two_sided=False)")
        _check(not paired or self.capabilities.pairs,
               f"Invalid paired={paired!r}: {type(self).__name__} does not pair its evaluations")
        defaults = {**defaults, "eps": float(eps), "q": q, "two_sided": bool(two_sided),
                    "accum_steps": accum_steps, "clip": clip, "paired": bool(paired)}
        super().__init__(params, defaults)
        for key in STEP_OPTIONS:
            values = {repr(g[key]) for g in self.param_groups}
            _check(len(values) == 1, f"Invalid {key}: parameter groups disagree ({', '.join(sorted(values))}); "
                                     f"it is an option of the whole step")
        for g in self.param_groups:
            _check(g["eps"] > 0.0 and math.isfinite(g["eps"]), f"Invalid eps (perturbation scale): {g['eps']}")
        self.impl = impl
        self.directions = self._make_directions(seed, direction, mask, impl)
        self.state[ZO_KEY] = {"step": 0, "skipped": 0, "forwards": 0, "seed": seed,
                              "direction": direction, "last_grads": []}
        self.evaluator = Evaluator()
        self.parallel = None  # forwardonly.distributed.distribute sets it
        self.deferral: Deferral | None = None
        self.source = None  # a tentative update evaluations see (lr="auto"), for the duration of one
        self.auto = AutoStep(self, holdout=bool(auto_holdout)) if auto else None
        self._unowned: set[int] | None = None
        self._in_step = False
        self._scalars: dict = {}  # scalars of the current step's update beyond its projected gradients
        self._probe_scalars: dict[str, list[float]] = {}  # per-probe scalars of an estimate (combined over ranks)
        self._rows = self._row_grads = None  # the examples' losses per point, where lr: auto reads a signal fraction

    _pairs_two_sided_only = True  # the base estimate pairs the two sides of a probe

    def _make_directions(self, seed: int, kind: str, mask, impl: str) -> Directions:
        """The run's directions (an optimizer with directions of another shape, LOZO's, overrides this)."""
        return Directions(seed, kind, mask=mask, blockwise=impl != "plain", native=impl == "auto")

    # ------------------------------------------------------------- options
    # the step-level options, read from the (equal) parameter groups; ``eps`` is the first group's
    eps = property(lambda self: self.param_groups[0]["eps"])
    two_sided = property(lambda self: self.param_groups[0]["two_sided"])
    accum_steps = property(lambda self: self.param_groups[0]["accum_steps"])
    clip = property(lambda self: self.param_groups[0]["clip"])
    paired = property(lambda self: self.param_groups[0]["paired"])

    @property
    def q(self) -> int:
        return self.param_groups[0]["q"]

    @q.setter
    def q(self, value: int) -> None:
        for g in self.param_groups:
            g["q"] = value

    @property
    def zo_state(self) -> dict:
        return self.state[ZO_KEY]

    @property
    def pending(self):
        """The deferred updates a perturbed pass settles (None when nothing is deferred in memory)."""
        return self.deferral

    # ------------------------------------------------------------- parameters
    def indexed_params(self):
        """``(param_index, param, group)`` for trainable parameters; the index counts all parameters."""
        return indexed(self.param_groups)

    def update_items(self, step: int):
        """``(param_index, param, group)`` of what step ``step`` perturbs and updates (by default every
        trainable parameter; block-wise and hybrid optimizers narrow it)."""
        return self.indexed_params()

    def perturbed_items(self) -> list[tuple[int, torch.Tensor]]:
        """``(param_index, param)`` of what the current step's perturbed evaluations perturb."""
        return [(i, p) for i, p, _ in self.update_items(self.zo_state["step"])]

    def param_at(self, index: int) -> torch.Tensor:
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if i == index:
                    return p
                i += 1
        raise IndexError(f"no parameter {index}")

    def _eps_scales(self) -> list[float] | None:
        """Per-parameter perturbation scales relative to the first group's eps (None when all equal)."""
        eps0 = self.eps
        if all(g["eps"] == eps0 for g in self.param_groups):
            return None
        return [g["eps"] / eps0 for _, _, g in self.update_items(self.zo_state["step"])]

    # ------------------------------------------------------------- evaluation
    def _reduce(self, values: list[float], micro: int) -> list[float]:
        """Losses of one evaluation as the step uses them (other ranks' averaged in, where distributed)."""
        if self.parallel is not None:
            return self.parallel.reduce_losses(values, micro)
        return values

    def _call(self, closure: Callable) -> float:
        outs = call_closure(closure, self.accum_steps)
        self.zo_state["forwards"] += len(outs)
        self._last_rows = signal.closure_rows(outs) if self._rows is not None and self.parallel is None else None
        total = sum(as_loss(v) for v in outs)
        if self.parallel is not None:
            return self.parallel.reduce_sum(total, len(outs))
        return total / len(outs)

    def _call_sliced(self, closure: Callable, k: int) -> list[float]:
        outs = [slice_losses(o, k) for o in call_closure(closure, self.accum_steps)]
        self.zo_state["forwards"] += k * len(outs)
        means = [sum(o[j] for o in outs) / len(outs) for j in range(k)]
        return self._reduce(means, len(outs))

    def losses(self, closure: Callable, step: int, points, scales=None) -> list[float]:
        """The losses at ``points`` (each ``[(probe, coef), ...]``), through the optimizer's evaluator."""
        return self.evaluator.losses(self, closure, step, points, scales)

    def evaluate(self, closure: Callable, step: int, terms, scales=None) -> float:
        """The loss at ``w + sum_k coef_k z_k(step)`` (times per-parameter ``scales``); ``w`` is untouched."""
        return self.losses(closure, step, [terms], scales)[0]

    # --------------------------------------------------------------------- step
    def probes(self) -> list[int]:
        """The probe indices this process evaluates (all of them, unless probes are split over ranks)."""
        return self.parallel.probes(self.q) if self.parallel is not None else list(range(self.q))

    def estimate(self, closure: Callable, step: int) -> tuple[float, list[float]]:
        """Loss and projected gradients ``[g_k]`` at the current point (every rank's, where distributed).

        An estimator that measures more per probe than ``g_k`` (HiZOO's curvature) puts it in
        ``self._probe_scalars`` (``{name: [one value per probe]}``); it is combined over ranks like the
        ``g_k`` and left in ``self._probe_scalars``."""
        self._probe_scalars, self._row_grads = {}, None
        self._rows = [] if self.auto is not None else None  # the examples' losses: only lr: auto reads them
        if self.parallel is None:
            return self._estimate(closure, step, self.probes())
        with self.parallel.estimating():
            loss, grads = self._estimate(closure, step, self.probes())
        loss, grads, self._probe_scalars = self.parallel.combine(loss, grads, self._probe_scalars)
        return loss, grads

    def _estimate(self, closure: Callable, step: int, probes: list[int]) -> tuple[float, list[float]]:
        eps, scales = self.eps, self._eps_scales()
        if self.two_sided:
            grads, total = [], 0.0
            for k in probes:
                lp, lm = self.losses(closure, step, [[(k, eps)], [(k, -eps)]], scales)
                grads.append((lp - lm) / (2 * eps))
                total += (lp + lm) / 2
            self._row_grads = signal.pair_grads(self._rows, len(probes), eps)
            return total / len(probes), grads
        l0 = self.evaluate(closure, step, [])
        grads = [(self.evaluate(closure, step, [(k, eps)], scales) - l0) / eps for k in probes]
        self._row_grads = signal.one_sided_grads(self._rows, len(probes), eps)
        return l0, grads

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        check_closure(closure, self.accum_steps, type(self).__name__)
        t = self.zo_state["step"]
        with self.directions.hold():  # draw each direction's random words once per step
            self._in_step = True
            try:
                out = self._step(closure, t)
            finally:
                self._in_step = False
            self.directions.carry = bool(self.deferral)  # the deferred update reads them next step
        return out

    def _step(self, closure: Callable, t: int):
        if self.auto is not None:
            return self.auto.step(closure, t)
        zs = self.zo_state
        loss, grads = self.estimate(closure, t)
        self._scalars = {k: list(v) for k, v in self._probe_scalars.items()}
        finite = math.isfinite(loss) and all(math.isfinite(g) for g in grads)
        if not (finite and all(math.isfinite(v) for vs in self._scalars.values() for v in vs)):
            zs["skipped"] += 1
            zs["step"] = t + 1
            zs["last_grads"], zs["last_scalars"] = [], {}
            return torch.tensor(float("nan"))
        if self.clip is not None:
            grads = [max(-self.clip, min(self.clip, g)) for g in grads]
        self.apply_grads(t, grads, closure=closure, loss=loss)
        zs["step"] = t + 1
        zs["last_grads"] = grads
        zs["last_scalars"] = dict(self._scalars)
        return torch.tensor(loss)

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def apply_grads(self, step: int, grads: list[float], closure: Callable | None = None, loss: float | None = None):
        """Apply the update of ``step`` from its projected gradients (also used to replay a seed log)."""
        if not self._in_step:
            self.flush()  # a replay: apply in order, immediately
        if self.parallel is not None:
            self.parallel.before_update(self)
        self._apply(step, self._coefficients(step, grads))

    def _coefficients(self, step: int, grads: list[float]) -> list[float]:
        """The update's coefficient of each probe's direction from the projected gradients (``g_k / q``).
        An optimizer whose coefficients need more (FZOO's loss spread) computes it here once, keeps it in
        ``self._scalars`` (logged with the step) and reads it from there when the step is replayed."""
        return [g / len(grads) for g in grads]  # len(grads) is q (all ranks' probes in probe-parallel runs)

    @torch.no_grad()
    def replay_update(self, step: int, grads: list[float], scalars: dict | None = None) -> None:
        """Apply the logged update of ``step`` (a seed log entry: projected gradients and the step's
        scalars), bitwise as the run applied it; the groups' ``lr`` must hold the logged values."""
        self.flush()
        self._scalars = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in (scalars or {}).items()}
        self._apply(step, self._coefficients(step, grads))
        self.zo_state["step"] = step + 1

    def _apply(self, step: int, coeffs: list[float]) -> None:
        """Update every trainable parameter of ``step`` (or record the update, where it is deferred)."""
        eps0 = self.eps
        recorder = self.auto.recorder if self.auto is not None and self._in_step else None
        for i, p, group in self.update_items(step):
            if group["lr"] == 0.0:
                continue
            cs = coeffs if group["eps"] == eps0 else [c * eps0 / group["eps"] for c in coeffs]
            if recorder is not None:  # lr="auto": the update stays tentative until the next step verifies it
                recorder.add(i, (step, cs, {k: v for k, v in group.items() if k != "params"}, None))
                continue
            if self.deferral is not None and self._in_step and self.deferral.wants(i):
                hyper = {k: v for k, v in group.items() if k != "params"}
                self.deferral.add(i, (step, cs, hyper, self._fold_terms(p, hyper, cs)))
                continue
            self._update(i, p, group, step, cs)

    def _update(self, index: int, p: torch.Tensor, group: dict, step: int, coeffs: list[float]) -> None:
        raise NotImplementedError  # pragma: no cover - every optimizer has its own

    def _fold_terms(self, p: torch.Tensor, group: dict, coeffs: list[float]):
        """The update as ``[(probe, coef)]`` to add to ``p`` when it is exactly that, else None."""
        return None

    @torch.no_grad()
    def _candidate(self, index: int, p: torch.Tensor, group: dict, step: int,
                   coeffs: list[float]) -> torch.Tensor:
        """What ``_update`` would make of ``p``, on a copy: ``p`` and its optimizer state are untouched (the
        update runs on the parameter object, with its data and state swapped for copies meanwhile)."""
        had = p in self.state
        saved = self.state[p] if had else None
        self.state[p] = {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                         for k, v in (saved or {}).items()}
        original = p.data
        p.data = original.clone(memory_format=torch.contiguous_format)
        try:
            self._update(index, p, group, step, coeffs)
            return p.data
        finally:
            p.data = original
            if had:
                self.state[p] = saved
            else:
                del self.state[p]

    @contextlib.contextmanager
    def _using_scalars(self, scalars: dict):
        saved, self._scalars = self._scalars, scalars
        try:
            yield
        finally:
            self._scalars = saved

    def _persistence(self) -> float:
        """How far an update keeps going in later steps, as a multiple of itself (``1 / (1 - momentum)`` for
        heavy-ball momentum); ``lr="auto"`` divides its step by it."""
        return 1.0

    def _loss_is_exact(self) -> bool:
        """Whether the loss a step returns is ``L(w)`` itself (else the mean of ``L(w +- eps z)``)."""
        return not self.two_sided

    def _settle_deferred(self) -> None:
        if self.deferral is not None:
            self.deferral.settle_all()

    @torch.no_grad()
    def flush(self) -> None:
        """Apply every deferred update now (``defer_update``; ``lr="auto"``'s tentative update, unverified; a
        no-op otherwise)."""
        self._settle_deferred()
        if self.auto is not None:
            self.auto.flush()

    # ------------------------------------------------------------- state dict
    def state_dict(self):
        self._settle_deferred()  # lr="auto": the tentative update stays in the state, to be verified on resume
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self._settle_deferred()
        if self.auto is not None:
            self.auto.tentative.drop()  # this run's own, superseded by the loaded state's
        zs = state_dict["state"].get(ZO_KEY)
        if zs is not None and ("auto" in zs) != (self.auto is not None):
            raise ValueError(f"optimizer state was saved with lr={'auto' if 'auto' in zs else 'a number'!r}, "
                             f"this optimizer has lr={'auto' if self.auto is not None else 'a number'!r}")
        if zs is not None:
            mine = self.zo_state
            for key in ("seed", "direction", *self._state_keys):
                if (key in zs or key in ("seed", "direction")) and zs.get(key) != mine.get(key):
                    raise ValueError(
                        f"optimizer state was saved with {key}={zs.get(key)!r}, this optimizer has {mine.get(key)!r}"
                    )
        before = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, old in zip(self.param_groups, before):
            for key, value in old.items():  # options a checkpoint from an older version did not store
                group.setdefault(key, value)
            for key in CALLING:
                group[key] = old[key]
        self.state[ZO_KEY] = dict(self.state[ZO_KEY])
        if self.auto is not None:
            self.state[ZO_KEY]["auto"] = copy.deepcopy(self.state[ZO_KEY]["auto"])
            self.auto.bind()

    _state_keys: tuple[str, ...] = ()  # further zo_state entries a checkpoint must agree on
