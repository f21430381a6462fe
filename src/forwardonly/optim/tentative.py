"""An update recorded but not yet written (``lr: auto``'s guard, :mod:`forwardonly.optim.autolr`)."""

from __future__ import annotations

import copy

import torch


class Tentative:
    """An update recorded but not written: ``value`` gives a parameter's value after it (computed on a copy,
    the parameter and its optimizer state untouched), ``commit`` writes it, ``drop`` forgets it.

    Its data is a plain dict (kept in ``state["zo"]["auto"]["pending"]``, so it follows ``state_dict``):
    ``{"step", "log", "scalars", "entries": {index: [coeffs, hyper]}}``.
    """

    def __init__(self, opt, data: dict | None = None):
        self.opt = opt
        self.data = data if data is not None else {"step": None, "log": None, "scalars": {}, "entries": {}}

    def __bool__(self) -> bool:
        return self.data["step"] is not None

    @property
    def indices(self) -> set[int]:
        return set(self.data["entries"])

    def items(self) -> list[tuple[int, torch.Tensor]]:
        return [(i, self.opt.param_at(i)) for i in sorted(self.data["entries"])]

    def open(self, step: int, scalars: dict) -> None:
        self.data.update(step=step, log=None, scalars=copy.deepcopy(scalars), entries={})

    def add(self, index: int, entry: tuple) -> None:
        _, coeffs, hyper, _ = entry
        self.data["entries"][index] = [list(coeffs), dict(hyper)]

    def value(self, index: int, p: torch.Tensor) -> torch.Tensor:
        coeffs, hyper = self.data["entries"][index]
        with self.opt._using_scalars(self.data["scalars"]):
            return self.opt._candidate(index, p, hyper, self.data["step"], coeffs)

    @torch.no_grad()
    def commit(self) -> dict:
        """Write the update; returns its seed-log entry."""
        step = self.data["step"]
        with self.opt._using_scalars(self.data["scalars"]):
            for i, (coeffs, hyper) in sorted(self.data["entries"].items()):
                self.opt._update(i, self.opt.param_at(i), hyper, step, coeffs)
        entry = self.data["log"] or {"step": step, "skip": True}
        self.drop()
        return entry

    def drop(self) -> None:
        self.data.update(step=None, log=None, scalars={}, entries={})
