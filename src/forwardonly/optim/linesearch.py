"""``lr: auto``'s line search: the scale of the step from losses measured along the update (*Scale*, the
held-out line search and *eps* of :mod:`forwardonly.optim.autolr`, whose :class:`~forwardonly.optim.autolr.AutoStep`
it is a part of).

A calibration applies the update the optimizer is about to make, on a copy, with step sizes ``eta`` and
``2 eta``, and fits a parabola through the losses: :func:`_parabola` says what the two differences show,
:meth:`LineSearch._bracket` finds the first scale, :meth:`LineSearch.calibrate` refits it around the current
one, and :meth:`LineSearch._limit` decides how far the scale may lengthen from how the slow training loss moved.
"""

from __future__ import annotations

import copy
import math

from .tentative import Tentative

FIRST_ETA, JUMP, TRIES = 1e-6, 30.0, 8
CALIB_SHARE = 0.025
EPS_RANGE = (1e-5, 1e-1)
HELD_RATE, HELD_JUMP, FLAT_GROWTH = 0.25, 4.0, 2.0


class LineSearch:
    """The calibrations of :class:`~forwardonly.optim.autolr.AutoStep`, which provides ``opt`` (the optimizer),
    ``st`` (its ``zo_state["auto"]``), ``holdout``, ``recorder`` and :meth:`_flat_band` (how far the slow loss
    may move between calibrations and still count as flat)."""

    opt: object
    st: dict
    holdout: bool
    recorder: Tentative | None

    def _flat_band(self) -> float:
        raise NotImplementedError

    def calibration_due(self, t: int) -> bool:
        st = self.st
        if st["scale"] is None:
            return True
        every = st["calib_every"]
        if every is None:  # 2.5 % of the forwards: a calibration costs about 3 (held out: 4)
            per_step = max(1, (self.opt.zo_state["forwards"] - st["extra_forwards"]) // (t + 1))
            cost = 4 if self.holdout else 3
            every = st["calib_every"] = max(10, math.ceil(cost / (CALIB_SHARE * per_step)))
        return t - st["last_calib"] >= every

    def _loss_at(self, closure, t: int, coeffs: list[float], eta: float, of: int | None = None) -> float:
        """The loss on step ``t``'s batch at the point the update ``coeffs`` of step ``of`` (default ``t``)
        with step size ``eta`` leads to (on a copy)."""
        opt = self.opt
        of = t if of is None else of
        trial = Tentative(opt)
        trial.open(of, opt._scalars)
        saved = [g["lr"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"] = eta
        self.recorder = trial
        try:
            opt._apply(of, coeffs)
        finally:
            self.recorder = None
            for g, lr in zip(opt.param_groups, saved):
                g["lr"] = lr
        return self._measure(closure, t, trial)

    def _measure(self, closure, t: int, source=None) -> float:
        opt = self.opt
        before = opt.zo_state["forwards"]
        opt.source = source
        try:
            loss = opt.losses(closure, t, [[]])[0]
        finally:
            opt.source = None
        self.st["extra_forwards"] += opt.zo_state["forwards"] - before
        return loss

    def calibrate(self, closure, t: int, grads: list[float], loss: float) -> None:
        opt, st = self.opt, self.st
        coeffs = opt._coefficients(t, grads)
        l0 = loss if opt._loss_is_exact() else self._measure(closure, t)
        if not opt._loss_is_exact():
            self._adapt_eps(loss, l0, grads)
        if st["scale"] is None:
            st["scale"] = self._bracket(closure, t, coeffs, l0)
            if self.holdout:  # the bracket's step is this batch's best: the next step checks it on its own
                self._keep(t, coeffs)
        else:  # one fit around the current scale; without a minimum, a nudge (the bracket is known)
            eta = st["scale"]
            kind, star = _parabola(self._loss_at(closure, t, coeffs, eta) - l0,
                                   self._loss_at(closure, t, coeffs, 2 * eta) - l0, eta, l0)
            if kind == "fit":
                new = math.exp(0.5 * math.log(eta) + 0.5 * math.log(star))
            else:
                new = eta * 2 if kind in ("further", "small") else eta / 2
            st["scale"] = self._limit(eta, new)
        st["last_calib"], st["calibrations"] = t, st["calibrations"] + 1

    def _limit(self, eta: float, new: float) -> float:
        """The scale a calibration leaves, from the slow loss's move since the last calibration (which this
        one records for the next, :meth:`_since_last`): ``new`` where it has fallen by the band (a longer
        step is earned by progress); at most ``2 eta`` where it is flat (a step too short to move the loss
        must still be able to grow); not above ``eta`` where it has risen. A shorter ``new`` always goes."""
        move = self._since_last()
        if new <= eta or move == "fell":
            return new
        if move == "flat":
            return min(new, FLAT_GROWTH * eta)
        return eta

    def _since_last(self) -> str:
        """How the slow loss moved since the last calibration: ``"fell"`` (by more than the band, or nothing
        to compare yet), ``"flat"`` (within it) or ``"rose"``; records the slow loss for the next one."""
        st = self.st
        slow, last = st["slow"], st.get("slow_at_calib")
        st["slow_at_calib"] = slow
        if slow is None or last is None:
            return "fell"
        band = self._flat_band()
        if slow < last - band:
            return "fell"
        return "flat" if slow <= last + band else "rose"

    def _keep(self, t: int, coeffs: list[float]) -> None:
        """Keep step ``t``'s update (its coefficients and scalars) for the next step to measure on its batch."""
        self.st["held"] = {"step": t, "coeffs": [float(c) for c in coeffs],
                           "scalars": copy.deepcopy(self.opt._scalars)}

    def _hold(self, closure, t: int, grads: list[float], loss: float) -> None:
        """A held-out calibration's first half: eps as :meth:`calibrate` adapts it, and the update kept."""
        opt, st = self.opt, self.st
        coeffs = opt._coefficients(t, grads)
        if not opt._loss_is_exact():
            self._adapt_eps(loss, self._measure(closure, t), grads)
        self._keep(t, coeffs)
        st["last_calib"], st["calibrations"] = t, st["calibrations"] + 1

    def _calibrate_held_out(self, closure, t: int) -> None:
        """The second half: the parabola along the held update, on step ``t``'s batch, from the weights as
        written (the held update is still tentative, or was never written)."""
        opt, st = self.opt, self.st
        held, st["held"] = st["held"], None
        saved = opt._scalars
        opt._scalars = copy.deepcopy(held["scalars"])
        try:
            l0 = self._measure(closure, t)
            eta = st["scale"]
            d1 = self._loss_at(closure, t, held["coeffs"], eta, held["step"]) - l0
            d2 = self._loss_at(closure, t, held["coeffs"], 2 * eta, held["step"]) - l0
        finally:
            opt._scalars = saved
        if not (math.isfinite(d1) and math.isfinite(d2)):
            st["scale"] = self._limit(eta, eta / 2)  # shorter; the slow loss is recorded as at any calibration
            return
        if max(abs(d1), abs(d2)) < 1e-6 * abs(l0) + 1e-12:  # too small a step to see: larger
            st["scale"] = self._limit(eta, eta * 2)
            return
        # L(s) ~ L(0) + b s + a s^2 along the held update, on held-out data; the step that minimises the
        # *expected* loss is E[-b] / E[2a]: both are averaged over the calibrations (weight 1/4), since one
        # held-out slope is mostly noise where the update is (its sign is a coin toss there)
        a, b = (d2 - 2 * d1) / (2 * eta * eta), (4 * d1 - d2) / (2 * eta)
        ho = st.setdefault("ho", {"n": 0, "slope": 0.0, "curv": 0.0})
        ho["n"] += 1
        w = max(1.0 / ho["n"], HELD_RATE)
        ho["slope"] += w * (-b * eta - ho["slope"])  # in units of the current scale, so old fits stay comparable
        ho["curv"] += w * (2 * a * eta * eta - ho["curv"])
        if ho["slope"] > 0 and ho["curv"] > 0:
            jump = JUMP if ho["n"] == 1 else HELD_JUMP  # the first fit corrects the bracket's same-batch step
            st["scale"] = self._limit(eta, eta * min(jump, max(1.0 / jump, ho["slope"] / ho["curv"])))
        else:
            st["scale"] = self._limit(eta, eta / 2)  # no expected descent along the updates measured: shorter
        if st["scale"] != eta:  # keep the averages in units of the new scale
            r = st["scale"] / eta
            ho["slope"], ho["curv"] = ho["slope"] * r, ho["curv"] * r * r

    def _bracket(self, closure, t: int, coeffs: list[float], l0: float) -> float:
        """The first scale: fits from ``FIRST_ETA`` by factors of ``JUMP``, then bisecting (geometrically)
        between a step too small to see and one past the minimum, until a parabola pins the minimum."""
        lo = hi = None
        eta = FIRST_ETA
        for _ in range(TRIES):
            kind, star = _parabola(self._loss_at(closure, t, coeffs, eta) - l0,
                                   self._loss_at(closure, t, coeffs, 2 * eta) - l0, eta, l0)
            if kind == "fit":
                return star
            if kind == "big":
                hi = eta
                eta = eta / JUMP if lo is None else math.sqrt(lo * eta)
            else:
                lo = eta
                nxt = min(star, eta * JUMP) if kind == "further" else eta * JUMP
                eta = nxt if hi is None else math.sqrt(eta * hi)
        return eta  # no minimum pinned: the last point of the bracket

    def _adapt_eps(self, mean_loss: float, l0: float, grads: list[float]) -> None:
        opt = self.opt
        eps = opt.eps
        g = math.sqrt(sum(x * x for x in grads) / len(grads))
        kappa = 2.0 * (mean_loss - l0) / (eps * eps)
        first, second = eps * g, 0.5 * eps * eps * abs(kappa)
        factor = 0.5 if second > 0.1 * first else 2.0 if first < 1e-5 * max(abs(l0), 1e-12) else 1.0
        new = min(EPS_RANGE[1], max(EPS_RANGE[0], eps * factor))
        if new != eps:
            for grp in opt.param_groups:
                grp["eps"] = grp["eps"] * new / eps


def _parabola(d1: float, d2: float, eta: float, l0: float) -> tuple[str, float]:
    """What the loss changes at steps ``eta`` and ``2 eta`` say: ``("fit", eta*)`` (a parabola's minimum
    near the trial steps), ``("small", _)`` (too small a step to see above the loss's rounding), ``("big",
    _)`` (past the minimum, rising), ``("further", guess)`` (still falling: the minimum lies beyond)."""
    if not (math.isfinite(d1) and math.isfinite(d2)):
        return "big", eta
    if max(abs(d1), abs(d2)) < 1e-6 * abs(l0) + 1e-12:
        return "small", eta
    a = (d2 - 2 * d1) / (2 * eta * eta)  # L(s) ~ L(0) + b s + a s^2
    b = (4 * d1 - d2) / (2 * eta)
    if b >= 0 or (d1 > 0 and d2 > d1):
        return "big", eta
    if a <= 0:
        return "further", eta * 4
    star = -b / (2 * a)
    if star > 8 * eta:
        return "further", star  # a long extrapolation: fit again around it
    return "fit", star
