"""``lr: auto``: the step size (and eps) from what the run measures, and a guard that undoes a bad step exactly.

Any ZO optimizer made with ``lr="auto"`` (``optim.lr: auto`` in a config) gets an :class:`AutoStep`
plug-in. Its rule, per step ``t``:

* **Scale** (a line search along the optimizer's own update, :mod:`~forwardonly.optim.linesearch`). At step 0, and then every ``calib_every``
  steps, the update the optimizer is about to make is applied, on a copy, with step sizes ``eta`` and
  ``2 eta``; the losses ``L(w)``, ``L(w - eta d)``, ``L(w - 2 eta d)`` on the step's batch give a parabola
  whose minimum ``eta*`` is the batch-optimal step along ``d`` (``1/kappa`` along each probe for ZO-SGD,
  whatever it is for ZO-Adam, FZOO, HiZOO, LOZO...). The first calibration brackets ``eta`` by factors of
  30 until the parabola has a minimum (at most 8 tries). ``scale`` is the geometric mean of the last fits
  (a moving average of ``log eta*``, weight 1/2); after the bracket it grows freely while the training loss
  falls (the slow loss of *Trend* a deviation ``s sqrt(1/199)`` below its value at the last calibration),
  by at most 2x a calibration while that loss is flat (within the band), and not while it rises.
* **Step size**: ``lr = beta * trust * signal * scale * factor / persistence``; ``beta`` is at most 1/2 (half the
  batch-optimal step: 3/4 of the predicted decrease, and room for a curvature twice the measured one),
  starts at 1/32, grows by 1/32 per accepted step (1/2 after ~90 steps: the trend watches shorter steps
  first), and halves at each rejected step (not below 1/64).
  ``factor`` is a schedule's multiplier (the training loop's warm-up and decay; 1 otherwise);
  ``persistence`` is how far an update keeps going through momentum (``1 / (1 - momentum)``, ZO-Adam's
  ``1 / (1 - beta1)``; 1 without), since the line search sees one step of it.
* **Guard**: the update of step ``t`` is *tentative*: it is recorded, not written, and the forwards of
  step ``t + 1`` evaluate the model at the updated point without writing it (each parameter's updated
  value is computed on a copy, one module at a time, :class:`Tentative`). The smoothed training loss is
  a moving mean of the accepted steps' losses (weight 1/10) with a moving deviation ``s`` (at least 2 % of
  the mean). If step ``t + 1``'s loss is non-finite, or ``4 s`` above the smoothed loss, or would raise the
  smoothed loss ``4`` of its own deviations (``4 s sqrt(1/19)``) above its lowest value of the last 20
  steps (a slow divergence, which the moving mean alone would follow), one more forward measures the loss
  without the update on the same batch: if that passes the bound too and the update adds less than ``s``,
  the batch was high, not the step, and the update goes on (``cleared`` counts these).
  Otherwise (or with a non-finite loss) the update is dropped, so the
  weights are bitwise those before it, step ``t + 1``'s estimate (measured at the rejected point) is
  discarded, and ``beta`` halves. Otherwise the update is written (the same arithmetic as the copy: the
  weights are bitwise those the candidate had) and the step goes on.
* **Trend** (``trust``): a drift slower than the guard's window (the smoothed loss creeping up over
  hundreds of steps, each step within bounds) is what a step too long for the data does where most of a
  batch's gradient is noise. From the tenth accepted step on, a slow loss (moving mean of weight 1/100,
  moving deviation ``s``) is kept; from the thirtieth, once the smoothed loss is ``3 s sqrt(1/19)`` above the slow loss's low
  since the last cut, ``trust`` halves (not below 1/1024; it never grows back) and both restart from the
  smoothed loss. A falling loss never sees it; a rise of ``s / 1000`` a step is caught within about 150
  steps, ``s / 100`` within about 100; a plateau sees a cut about once in 800 steps. A rejected step also
  takes a fifth off ``trust`` (``beta``'s halving lasts ~100 steps; a scale that keeps tripping the guard is too long). No forward spent (``cuts`` counts the halvings).
* **Signal** (``signal``, :mod:`~forwardonly.optim.signal`): the line search finds the best step *for the
  batch*; the training set's best step along the update is that times the batch's signal fraction ``f = 1 -
  E[var_i(g_i) / B] / E[g^2]`` (``g_i`` the examples' projected gradients, from the examples' losses a
  closure's loss carries as ``loss.rows``; times ``1 - B / n`` for ``n`` examples, :attr:`AutoStep.examples`).
  ``signal`` is ``f`` plus two standard errors, within [1/64, 1] (about ``f + 0.14`` for MeZO after 400
  steps); 1 without per-example losses (a bare closure, a paired or distributed evaluation) and with
  ``auto_holdout``, whose line search measures it itself.
* **Held-out line search** (``auto_holdout=True``): the line search above runs on the batch whose
  probes made the update, so it finds the step that is best *for that batch*, which the update was
  built to descend: where the batch's gradient is mostly noise (many training examples, a small batch,
  a well-fitted start) that step is too long, and the run drifts upwards slowly, each step within the
  guard's bounds. With the option, every calibration keeps the update's coefficients (the first one
  after its same-batch bracket, to check it) and measures ``L(w)``, ``L(w - eta d)``, ``L(w - 2 eta d)``
  at the *next* step, on its batch (before the guard settles the update; the weights are still ``w``
  then). There, a parabola's slope and curvature along ``d`` are each averaged over the calibrations
  (weight 1/4, in units of the current scale), and the scale moves to the averages' minimum (at most 4x
  either way per calibration, 30x at the first; halved while the averaged slope shows no descent): the step that lowers the *expected* loss along the updates,
  small where they are mostly noise, where one held-out slope alone would be a coin toss. Cost: 3 forwards
  at the next step, and (two-sided) the 1 that measures ``L(w)`` for eps; ``calib_every`` counts 4.
* **eps** (two-sided estimates): at a calibration, the loss at ``w`` next to the probes' mean gives the
  probes' mean curvature ``kappa = 2 (mean(L+, L-) - L(w)) / eps^2``; ``eps`` halves when the second-order
  term ``eps^2 |kappa| / 2`` exceeds a tenth of the first-order one ``eps |g|``, and doubles when
  ``eps |g|`` is below ``1e-5 |L|`` (a difference that fp32 losses barely resolve), within [1e-5, 1e-1].

Cost, in forward passes: a calibration is 2 forwards (3 with a two-sided estimate, which does not measure
``L(w)``), the first one up to 2 per try; ``calib_every`` defaults to the interval that keeps calibrations
at 2.5 % of the step's forwards (``3 / (0.025 f)`` steps for ``f`` forwards a step: 60 for MeZO, 10 at
least). A rejected step wastes its forwards (the guard itself measures nothing extra). The forwards
spent on calibrations and suspects are counted in ``state["zo"]["auto"]["extra_forwards"]``, rejections
in ``["rejected"]``. Each forward of a step after an update also builds the updated values of each module
on a copy (time and one module's memory, no forward).

The weights lag one (tentative) update behind: :meth:`~forwardonly.optim.base.ZOOptimizer.flush` writes
it (unverified), as the training loop does at the end; a checkpoint keeps it in the optimizer's state
instead, so a resumed run verifies it as the uninterrupted one would. The seed log receives an update
when it is written, a rejected one as a skip (``state["zo"]["settled"]`` holds the entries each step and
flush settles).
"""

from __future__ import annotations

import copy
import math

import torch

from . import signal
from .linesearch import LineSearch
from .tentative import Tentative

BETA_MAX, BETA_MIN, BETA_START, BETA_GROWTH = 0.5, 1.0 / 64, 1.0 / 32, 1.0 + 1.0 / 32
BOUND_SIGMAS, MIN_SPREAD, WARM, RATE, WINDOW = 4.0, 0.02, 5, 0.1, 20
TREND_SIGMAS, TRUST_MIN, SLOW_RATE, REJECT_TRUST = 3.0, 1.0 / 1024, 0.01, 0.8


class AutoStep(LineSearch):
    """The ``lr="auto"`` plug-in of a :class:`~forwardonly.optim.base.ZOOptimizer` (see the module docstring).

    Args:
        opt: the optimizer.
        calib_every: steps between calibrations (default: 2.5 % of the forwards, from the first step's count).
        holdout: the held-out line search (the module docstring; ``auto_holdout`` of the optimizer).

    Example::

        opt = ZOSGD(model.parameters(), lr="auto", eps=1e-3)
        for batch in data:
            opt.step(lambda: loss_fn(model(batch.x), batch.y))
        opt.flush()                                     # write the last (tentative) update
        opt.zo_state["auto"]["scale"], opt.param_groups[0]["lr"]
    """

    def __init__(self, opt, calib_every: int | None = None, holdout: bool = False):
        self.opt = opt
        self.factor = 1.0
        self.holdout = holdout
        opt.zo_state["auto"] = {"scale": None, "beta": BETA_START, "mean": 0.0, "var": 0.0, "n": 0, "recent": [],
                                "calib_every": calib_every, "last_calib": None, "rejected": 0,
                                "extra_forwards": 0, "calibrations": 0, "pending": None, "held": None}
        self.bind()
        self.recorder: Tentative | None = None  # where _apply records during a step
        self.examples: int | None = None  # the training set's size, where the caller knows it (the noise's fpc)

    @property
    def st(self) -> dict:
        return self.opt.zo_state["auto"]

    def bind(self) -> None:
        """(Re)attach to the state dict (after ``load_state_dict``)."""
        st = self.st
        for key, value in (("trust", 1.0), ("cuts", 0), ("slow", None), ("slow_var", 0.0), ("low", None),
                           ("cleared", 0), ("noise", signal.new_state()), ("signal", 1.0)):
            st.setdefault(key, value)  # a new run's, or a state saved before the trend rules
        if st.get("pending") is None:
            st["pending"] = Tentative(self.opt).data
        self.tentative = Tentative(self.opt, st["pending"])

    # ------------------------------------------------------------------ step
    def step(self, closure, t: int):
        opt, zs, st = self.opt, self.opt.zo_state, self.st
        settled: list[dict] = []
        zs["settled"] = settled
        opt.source = self.tentative if self.tentative else None
        try:
            loss, grads = opt.estimate(closure, t)
        finally:
            opt.source = None
        scalars = {k: list(v) for k, v in opt._probe_scalars.items()}
        finite = (math.isfinite(loss) and all(math.isfinite(g) for g in grads)
                  and all(math.isfinite(v) for vs in scalars.values() for v in vs))
        if finite:  # the examples' projected gradients, where the closure gave their losses
            signal.observe(st["noise"], getattr(opt, "_row_grads", None), self.examples)
        if st.get("held") is not None:  # the last step's update, on this step's batch: before it is settled
            self._calibrate_held_out(closure, t)
        if self.tentative:
            if not finite or (self.too_high(loss) and self._at_fault(closure, t, loss)):
                settled.append({"step": self.tentative.data["step"], "skip": True})
                self.tentative.drop()
                st["beta"], st["rejected"] = max(BETA_MIN, st["beta"] / 2), st["rejected"] + 1
                st["trust"] = max(TRUST_MIN, st["trust"] * REJECT_TRUST)
                return self._skip(t, loss)  # measured at the rejected point
            settled.append(self.tentative.commit())
            st["beta"] = min(BETA_MAX, st["beta"] * BETA_GROWTH)
        if not finite:
            return self._skip(t, float("nan"))
        self.observe(loss)
        opt._scalars = scalars
        if opt.clip is not None:
            grads = [max(-opt.clip, min(opt.clip, g)) for g in grads]
        if self.calibration_due(t):
            if self.holdout and st["scale"] is not None:
                self._hold(closure, t, grads, loss)
            else:
                self.calibrate(closure, t, grads, loss)
        st["signal"] = 1.0 if self.holdout else signal.fraction(st["noise"])  # held out: measured by the search
        for g in opt.param_groups:
            g["lr"] = st["beta"] * st["trust"] * st["signal"] * st["scale"] * self.factor / opt._persistence()
        self.tentative.open(t, opt._scalars)
        self.recorder = self.tentative
        try:
            opt.apply_grads(t, grads, closure=closure, loss=loss)
        finally:
            self.recorder = None
        choice = zs.get("cons_choice", 1.0)  # ZO-SGD-Cons: the candidate it kept
        self.tentative.data["scalars"] = copy.deepcopy(opt._scalars)
        self.tentative.data["log"] = None if choice == 0.0 else {
            "step": t, "lr": [g["lr"] for g in opt.param_groups], "grads": [choice * g for g in grads],
            **({"scalars": copy.deepcopy(opt._scalars)} if opt._scalars else {})}
        zs["step"], zs["last_grads"], zs["last_scalars"] = t + 1, grads, dict(opt._scalars)
        return torch.tensor(loss)

    def _skip(self, t: int, loss: float):
        zs = self.opt.zo_state
        zs["skipped"] += 1
        zs["step"], zs["last_grads"], zs["last_scalars"] = t + 1, [], {}
        zs["settled"].append({"step": t, "skip": True})
        return torch.tensor(loss)

    def flush(self) -> None:
        """Write the tentative update now (unverified); its log entry goes to ``state["zo"]["settled"]``."""
        if self.tentative:
            self.opt.zo_state["settled"] = [self.tentative.commit()]

    # ----------------------------------------------------------------- guard
    def observe(self, loss: float) -> None:
        """Fold an accepted step's loss into the smoothed loss (a moving mean and deviation, weight 1/10)."""
        st = self.st
        st["n"] += 1
        r = max(1.0 / st["n"], RATE)
        d = loss - st["mean"]
        st["mean"] += r * d
        st["var"] = (1.0 - r) * (st["var"] + r * d * d)
        st["recent"] = [*st.get("recent", []), st["mean"]][-WINDOW:]
        self._trend(loss)

    def _trend(self, loss: float) -> None:
        """Halve ``trust`` when the smoothed loss has risen ``TREND_SIGMAS`` of its deviations above the slow
        loss's lowest value since the last cut (the module docstring's *Trend*)."""
        st = self.st
        if st["n"] < 1.0 / RATE:
            return
        if st["slow"] is None:
            st["slow"], st["slow_var"], st["low"] = st["mean"], st["var"], st["mean"]
            return
        d, r = loss - st["slow"], max(1.0 / st["n"], SLOW_RATE)  # a plain mean over the first 100 steps
        st["slow"] += r * d
        st["slow_var"] = (1.0 - r) * (st["slow_var"] + r * d * d)
        if st["n"] < 3.0 / RATE:  # the low of a mean over a few losses would be biased down
            st["low"] = st["slow"]
            return
        st["low"] = min(st["low"], st["slow"])
        if st["mean"] - st["low"] > TREND_SIGMAS * self._spread() * math.sqrt(RATE / (2.0 - RATE)):
            st["trust"] = max(TRUST_MIN, st["trust"] / 2)
            st["slow"] = st["low"] = st["mean"]
            st["cuts"] += 1

    def _at_fault(self, closure, t: int, loss: float) -> bool:
        """Whether the update, not step ``t``'s batch, put ``loss`` past the bound (*Guard*; one forward)."""
        without = self._measure(closure, t)  # the weights as written, on the same batch
        cleared = math.isfinite(without) and self.too_high(without) and loss - without < self._bound_spread()
        self.st["cleared"] += int(cleared)
        return not cleared

    def _bound_spread(self) -> float:
        st, mean = self.st, self.st["mean"]
        return max(math.sqrt(st["var"]) if st["n"] >= WARM else abs(mean), MIN_SPREAD * abs(mean))

    def too_high(self, loss: float) -> bool:
        """Whether ``loss`` (at the tentative update's point) is past the bound: a jump above the smoothed
        loss by ``4`` deviations, or a smoothed loss that would rise ``4`` of its own deviations above its
        lowest of the last ``WINDOW`` steps (a slow divergence the moving mean would otherwise follow)."""
        st = self.st
        if st["n"] == 0:
            return False
        mean, spread = st["mean"], self._bound_spread()
        if loss > mean + BOUND_SIGMAS * spread:
            return True
        if st["n"] < WARM:
            return False
        r = max(1.0 / (st["n"] + 1), RATE)
        smoothed = mean + r * (loss - mean)
        return smoothed > min(st["recent"]) + BOUND_SIGMAS * spread * math.sqrt(r / (2.0 - r))

    def _spread(self) -> float:
        """The losses' deviation around the slow loss (at least 2 % of the smoothed loss)."""
        return max(math.sqrt(self.st["slow_var"]), MIN_SPREAD * abs(self.st["mean"]))

    def _flat_band(self) -> float:
        """The slow loss's own standard error: a move within it between calibrations is no move."""
        return self._spread() * math.sqrt(SLOW_RATE / (2 - SLOW_RATE))
