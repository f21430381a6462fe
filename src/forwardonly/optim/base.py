"""The zeroth-order step shared by every ZO optimizer.

A ZO optimizer never calls ``backward``. Each step it evaluates the loss at
perturbed points ``w +- eps * z_k`` (``k < q`` probes), turns the differences
into projected gradients ``g_k`` (scalars), and hands ``c_k = g_k / q`` to the
subclass's :meth:`ZOOptimizer._apply`, which updates the weights from the
directions regenerated from their seeds.

Estimators (Spall 1992; Nesterov & Spokoiny 2017; MeZO, Malladi et al. 2023):

* two-sided: ``g_k = (L(w + eps z_k) - L(w - eps z_k)) / (2 eps)``, 2q forwards;
* one-sided: ``g_k = (L(w + eps z_k) - L(w)) / eps``, q + 1 forwards.

``E[g_k z_k] -> grad L`` as ``eps -> 0`` for Gaussian and Rademacher ``z``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from ._closure import forward_only
from ._perturb import KINDS, Directions, Perturbation

ZO_KEY = "zo"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


class ZOOptimizer(torch.optim.Optimizer):
    _pairs = True  # whether ``paired=True`` is honoured (subclasses with their own estimate say no)

    """Base class of the zeroth-order optimizers (see :mod:`forwardonly.optim.base`).

    Args (estimator options, shared by all subclasses):
        eps: perturbation scale (default 1e-3).
        q: probes (directions) per step (default 1).
        two_sided: two-sided (default) or one-sided differences.
        direction: ``"rademacher"`` (default) or ``"gaussian"``.
        seed: run seed; directions are a pure function of (seed, step, probe, parameter).
        accum_steps: micro-batches per step sharing the same directions; the
            closure is then called as ``closure(i)`` for ``i < accum_steps`` and
            the losses are averaged (default 1: ``closure()``).
        clip: if set, projected gradients are clipped to ``[-clip, clip]``.
        paired: evaluate each probe's two perturbed points in one closure call (two-sided only):
            the closure runs the model on its batch stacked twice along dim 0 and returns the two
            halves' losses, ``L(w + eps z)`` for the first half and ``L(w - eps z)`` for the second
            (see :mod:`forwardonly.optim._paired`; :func:`forwardonly.optim.pair_batch` and
            :func:`forwardonly.optim.pair_losses` help). The estimate is the same; a step reads the
            weights once less per probe and pays the forward's fixed costs once, for activations of
            twice the batch (default False). A paired call counts as two forwards.

    ``step(closure)`` runs forwards only and returns the loss at the unperturbed
    point (two-sided: the mean of the two perturbed losses). A non-finite loss
    skips the step: the weights stay exactly as they were and
    ``state["zo"]["skipped"]`` counts it.
    """

    def __init__(self, params, defaults: dict, *, eps: float = 1e-3, q: int = 1, two_sided: bool = True,
                 direction: str = "rademacher", seed: int = 0, accum_steps: int = 1,
                 clip: float | None = None, paired: bool = False):
        lr = defaults.get("lr")
        _check(lr is not None and lr >= 0.0, f"Invalid learning rate: {lr}")
        wd = defaults.get("weight_decay", 0.0)
        _check(wd >= 0.0, f"Invalid weight_decay value: {wd}")
        _check(eps > 0.0 and math.isfinite(eps), f"Invalid eps (perturbation scale): {eps}")
        _check(isinstance(q, int) and q >= 1, f"Invalid number of probes q: {q}")
        _check(direction in KINDS, f"Invalid direction: {direction!r} (expected one of {KINDS})")
        _check(isinstance(accum_steps, int) and accum_steps >= 1, f"Invalid accum_steps: {accum_steps}")
        _check(clip is None or clip > 0.0, f"Invalid clip: {clip}")
        _check(isinstance(seed, int), f"Invalid seed: {seed!r}")
        _check(not paired or two_sided, f"Invalid paired={paired!r}: pairing evaluates the two sides of a "
                                        f"two-sided estimate together (two_sided=False)")
        _check(not paired or self._pairs, f"Invalid paired={paired!r}: {type(self).__name__} does not pair its "
                                          f"evaluations")
        super().__init__(params, defaults)
        self.eps, self.q, self.two_sided = float(eps), q, bool(two_sided)
        self.accum_steps, self.clip = accum_steps, clip
        self.paired = bool(paired)
        self.directions = Directions(seed, direction)
        self.state[ZO_KEY] = {"step": 0, "skipped": 0, "forwards": 0, "seed": seed,
                              "direction": direction, "last_grads": []}
        self._unowned: set[int] | None = None
        self._pending: dict[int, tuple[int, list]] = {}  # param index -> (step, terms): deferred updates
        self.fused = True  # blockwise perturbation inside nn.Linear / nn.Embedding (same values; see _fused.py)

    # ------------------------------------------------------------------ helpers
    def indexed_params(self):
        """``(param_index, param, group)`` for trainable parameters; the index counts all parameters."""
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    yield i, p, group
                i += 1

    @property
    def zo_state(self) -> dict:
        return self.state[ZO_KEY]

    def _call(self, closure: Callable) -> float:
        if self.accum_steps == 1:
            losses = [closure()]
        else:
            losses = [closure(i) for i in range(self.accum_steps)]
        self.zo_state["forwards"] += len(losses)
        return sum(float(v) for v in losses) / len(losses)

    def _call_pair(self, closure: Callable) -> tuple[float, float]:
        if self.accum_steps == 1:
            outs = [closure()]
        else:
            outs = [closure(i) for i in range(self.accum_steps)]
        pairs = []
        for out in outs:
            vals = [float(v) for v in out] if isinstance(out, (tuple, list)) else (
                out.detach().reshape(-1).tolist() if isinstance(out, torch.Tensor) else None)
            if vals is None or len(vals) != 2:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"with paired=True the closure must return the two halves' losses (a tensor of "
                                 f"shape (2,)), got {shape}; see forwardonly.optim.pair_losses")
            pairs.append(vals)
        self.zo_state["forwards"] += 2 * len(pairs)
        return (sum(a for a, _ in pairs) / len(pairs), sum(b for _, b in pairs) / len(pairs))

    def evaluate_pair(self, closure: Callable, step: int, terms, pair_terms, scales=None) -> tuple[float, float]:
        """The losses at ``w + sum_k coef_k z_k`` (first half of the batch) and at the same with
        ``pair_terms`` (second half), from one closure call over the doubled batch (``paired=True``)."""
        items = [(i, p) for i, p, _ in self.indexed_params()]
        pending = self._pending if self._pending else None
        self._pending = {}
        with Perturbation(items, self.directions, step, terms, scales, fused=self.fused, pending=pending,
                          pair_terms=pair_terms) as pert:
            losses = self._call_pair(closure)
        unowned = {i for i, _ in items} - pert.touched
        if unowned:
            from ._paired import Unpairable

            raise Unpairable(f"paired evaluation: parameters {sorted(unowned)} were not used by any module's "
                             f"forward, so they cannot see two values in one forward; use paired=False")
        return losses

    # ------------------------------------------------------- deferred updates
    def _defer(self, step: int, index: int, terms: list) -> None:
        """Record ``p += sum_k coef_k z_k(step)`` for parameter ``index``, applied by the next pass."""
        if index in self._pending:  # one pending update per parameter: apply the older one first
            self._apply_pending(index)
        self._pending[index] = (step, list(terms))

    def _apply_pending(self, index: int) -> None:
        pstep, terms = self._pending.pop(index)
        for i, p, _ in self.indexed_params():
            if i == index:
                self.directions.add_(p, pstep, terms, i)
                return

    @torch.no_grad()
    def flush(self) -> None:
        """Apply every deferred update now (``defer_update``; a no-op otherwise)."""
        if not self._pending:
            return
        params = {i: p for i, p, _ in self.indexed_params()}
        for i in sorted(self._pending):
            pstep, terms = self._pending.pop(i)
            self.directions.add_(params[i], pstep, terms, i)

    def evaluate(self, closure: Callable, step: int, terms, scales=None) -> float:
        """The loss at ``w + sum_k coef_k z_k(step)`` (times per-parameter ``scales``); ``w`` is untouched
        (deferred updates of the previous step are applied on the way, see ``ZOSGD(defer_update=True)``)."""
        if not terms:
            self.flush()
            return self._call(closure)
        items = [(i, p) for i, p, _ in self.indexed_params()]
        first = self._unowned is None
        pending = self._pending if self._pending else None
        self._pending = {}
        with Perturbation(items, self.directions, step, terms, scales, whole=self._unowned or (),
                          fused=self.fused, pending=pending) as pert:
            loss = self._call(closure)
        if first:
            self._unowned = {i for i, _ in items} - pert.touched
            if self._unowned:  # some parameters live outside any module: evaluate again with them swapped
                with Perturbation(items, self.directions, step, terms, scales, whole=self._unowned,
                                  fused=self.fused):
                    loss = self._call(closure)
        return loss

    # --------------------------------------------------------------------- step
    def estimate(self, closure: Callable, step: int) -> tuple[float, list[float]]:
        """Loss and projected gradients ``[g_k]`` at the current point."""
        eps = self.eps
        if self.two_sided:
            grads, total = [], 0.0
            for k in range(self.q):
                if self.paired:
                    lp, lm = self.evaluate_pair(closure, step, [(k, eps)], [(k, -eps)])
                else:
                    lp = self.evaluate(closure, step, [(k, eps)])
                    lm = self.evaluate(closure, step, [(k, -eps)])
                grads.append((lp - lm) / (2 * eps))
                total += (lp + lm) / 2
            return total / self.q, grads
        l0 = self.evaluate(closure, step, [])
        grads = [(self.evaluate(closure, step, [(k, eps)]) - l0) / eps for k in range(self.q)]
        return l0, grads

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step() needs a closure that runs the forward pass and "
                             f"returns the loss (a transformers Trainer calls step() without one: use "
                             f"forwardonly.hf.ZOTrainer)")
        _check_closure(closure, self.accum_steps)
        closure = forward_only(closure)
        zs = self.zo_state
        t = zs["step"]
        with self.directions.hold():  # draw each direction's random words once per step
            out = self._step(closure, t)
            self.directions.carry = bool(self._pending)  # the deferred update reads them next step
        return out

    def _step(self, closure: Callable, t: int):
        zs = self.zo_state
        loss, grads = self.estimate(closure, t)
        if not (math.isfinite(loss) and all(math.isfinite(g) for g in grads)):
            zs["skipped"] += 1
            zs["step"] = t + 1
            zs["last_grads"] = []
            return torch.tensor(float("nan"))
        if self.clip is not None:
            grads = [max(-self.clip, min(self.clip, g)) for g in grads]
        self.apply_grads(t, grads, closure=closure, loss=loss)
        zs["step"] = t + 1
        zs["last_grads"] = grads
        return torch.tensor(loss)

    @torch.no_grad()
    def apply_grads(self, step: int, grads: list[float], closure: Callable | None = None, loss: float | None = None):
        """Apply the update of ``step`` from its projected gradients (also used to replay a seed log)."""
        self._apply(step, [g / self.q for g in grads])

    def _apply(self, step: int, coeffs: list[float]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------- state dict
    def load_state_dict(self, state_dict: dict) -> None:
        zs = state_dict["state"].get(ZO_KEY)
        if zs is not None:
            mine = self.zo_state
            for key in ("seed", "direction"):
                if zs.get(key) != mine.get(key):
                    raise ValueError(
                        f"optimizer state was saved with {key}={zs.get(key)!r}, this optimizer has {mine.get(key)!r}"
                    )
        super().load_state_dict(state_dict)
        self.state[ZO_KEY] = dict(self.state[ZO_KEY])


def _check_closure(closure: Callable, accum_steps: int) -> None:
    if accum_steps == 1:
        return
    try:
        n = len([p for p in inspect.signature(closure).parameters.values()
                 if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    except (TypeError, ValueError):
        return
    if n != 1:
        raise ValueError(f"with accum_steps={accum_steps} the closure must take the micro-batch index: closure(i)")
