"""Deferred updates: a step records each parameter's update, the next pass over the parameter writes it.

Used by :class:`~forwardonly.optim.base.ZOOptimizer` when ``defer_update`` is set (block streaming:
the update of a block is written while the block is in memory for the next step's forwards).
"""

from __future__ import annotations

from collections.abc import Callable


class Deferral:
    """Updates recorded by a step and written by the next pass over each parameter.

    ``wants(index)`` says which parameters defer; an entry is ``(step, coeffs, hyper, terms)``:
    the group's hyperparameters at that step, and the update as plain ``terms`` when the optimizer
    can fold it into a perturbed linear layer (:meth:`ZOOptimizer._fold_terms`). This object is also
    the ``pending`` a :class:`~forwardonly.optim.perturb.Perturbation` settles.
    """

    def __init__(self, opt, wants: Callable[[int], bool]):  # opt: the ZOOptimizer whose updates wait here
        self.opt, self.wants = opt, wants
        self.entries: dict[int, tuple] = {}

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __contains__(self, index: int) -> bool:
        return index in self.entries

    def add(self, index: int, entry: tuple) -> None:
        if index in self.entries:  # one pending update per parameter: apply the older one first
            self.settle(index)
        self.entries[index] = entry

    def fold(self, index: int):
        """``(step, terms)`` of the pending update of ``index`` when it is a plain sum of directions."""
        entry = self.entries.get(index)
        if entry is None or entry[3] is None:
            return None
        del self.entries[index]
        return entry[0], entry[3]

    def settle(self, index: int) -> None:
        entry = self.entries.pop(index, None)
        if entry is not None:
            step, coeffs, hyper, _ = entry
            self.opt._update(index, self.opt.param_at(index), hyper, step, coeffs)

    def settle_all(self) -> None:
        for i in sorted(self.entries):
            self.settle(i)
