"""CMA-ES over a small set of parameters (a per-label bias, a short soft prompt), through the ``cma`` package."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Capabilities, _check
from .evaluate import as_loss, call_closure, check_closure

ZO_KEY = "zo"


@dataclass
class CMAESConfig:
    """CMA-ES's options (see :class:`CMAES`).

    Args:
        lr: the mean's learning rate (``cma``'s ``CMA_cmean``; 1 is the textbook update), read when the search
            starts: a schedule does not change it.
        sigma: the initial step size, in the parameters' units.
        population: candidates per step (0: ``cma``'s default, ``4 + 3 ln n``).
        max_dim: the most parameters the search takes (its covariance has ``n^2`` entries).
    """

    lr: float = 1.0
    sigma: float = 0.5
    population: int = 0
    max_dim: int = 1000


def _search(x0, sigma: float, population: int, cmean: float, seed: int):
    """A ``cma.CMAEvolutionStrategy`` drawing its samples from its own generator (the global numpy RNG is
    left alone), quiet, and never stopping on its own (the training loop decides)."""
    import numpy as np

    from ..errors import require

    cma = require("cma", "optim.name=cma-es")
    rng = np.random.Generator(np.random.PCG64(seed))
    opts = {"seed": np.nan, "randn": lambda lam, n: rng.standard_normal((lam, n)), "verbose": -9,
            "verb_log": 0, "verb_disp": 0, "CMA_cmean": cmean, "tolfun": 0, "tolx": 0, "tolflatfitness": 10**9,
            "tolstagnation": 10**9, "tolfunhist": 0}
    if population:
        opts["popsize"] = population
    return cma.CMAEvolutionStrategy(x0.numpy(), sigma, opts)


class CMAES(torch.optim.Optimizer):
    """CMA-ES (Hansen & Ostermeier, "Completely Derandomized Self-Adaptation in Evolution Strategies", 2001;
    for black-box tuning of language models: Sun et al., "BBTv2", EMNLP 2022) over the trainable parameters
    as one vector, with the ``cma`` package (``pip install 'forwardonly[cma]'``).

    A step asks the search for ``population`` candidates, evaluates the loss at each (the candidate is
    written into the parameters for its forward pass), tells the search their losses and leaves the
    parameters at the new mean. Only the order of the losses counts, so any objective works, accuracy
    included. A step costs ``population`` forward passes; a step with a non-finite loss tells nothing and
    leaves the parameters as they were.

    The search is a pure function of the seed, the start point and the losses: the state (and the seed log)
    keeps the start point and every step's losses, and a resumed run or a replay rebuilds the search by
    telling it those losses again, bitwise. It runs in one process (``nproc`` must be 1).

    Args:
        params: the parameters to search (at most ``max_dim`` values in all).
        lr: the mean's learning rate (default 1.0; ``cma``'s ``CMA_cmean``).
        sigma: initial step size (default 0.5).
        population: candidates per step (default 0: ``4 + 3 ln n``).
        max_dim: refuse more than this many parameters (default 1000).
        seed: the search's random seed.
        accum_steps: micro-batches per evaluation (``closure(i)``).

    Memory: the search's ``n x n`` covariance and its eigenvectors in float64.

    Example::

        opt = CMAES([bias], sigma=0.5, seed=0)
        loss = opt.step(lambda: 1 - accuracy(model(x) + bias, y))
    """

    capabilities = Capabilities(pairs=False, auto_lr=False, distributes=False)
    paired = False

    def __init__(self, params, lr: float = 1.0, sigma: float = 0.5, population: int = 0, max_dim: int = 1000,
                 seed: int = 0, accum_steps: int = 1):
        _check(isinstance(lr, (int, float)) and 0 < lr <= 1, f"Invalid learning rate: {lr!r} (in (0, 1])")
        _check(isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma),
               f"Invalid sigma: {sigma!r} (the initial step size, > 0)")
        _check(isinstance(population, int) and (population == 0 or population >= 2),
               f"Invalid population: {population!r} (at least 2, or 0 for 4 + 3 ln n)")
        _check(isinstance(seed, int), f"Invalid seed: {seed!r}")
        _check(isinstance(accum_steps, int) and accum_steps >= 1, f"Invalid accum_steps: {accum_steps}")
        super().__init__(params, dict(lr=lr))
        self.params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        n = sum(p.numel() for p in self.params)
        _check(1 <= n <= max_dim, f"Invalid parameter set for cma-es: {n} values (max_dim={max_dim}; its covariance "
                                  f"has n^2 entries): train a per-label bias (scheme label_bias) or a short prompt, "
                                  f"or use optim es")
        self.sigma, self.population, self.cmean, self.accum_steps = float(sigma), population, float(lr), accum_steps
        x0 = torch.cat([p.detach().reshape(-1).double().cpu() for p in self.params])
        self.state[ZO_KEY] = {"step": 0, "skipped": 0, "forwards": 0, "seed": seed, "x0": x0, "history": [],
                              "last_grads": [], "last_scalars": {}}
        self._es, self._told = None, 0

    @property
    def zo_state(self) -> dict:
        return self.state[ZO_KEY]

    def search(self):
        """The ``cma`` search after every logged step (built and brought up to date on first use)."""
        zs = self.zo_state
        if self._es is None or self._told > len(zs["history"]):
            self._es, self._told = _search(zs["x0"], self.sigma, self.population, self.cmean, zs["seed"]), 0
        while self._told < len(zs["history"]):
            candidates, losses = self._es.ask(), zs["history"][self._told]
            if losses is not None:  # a skipped step drew its candidates and told nothing
                self._es.tell(candidates, losses)
            self._told += 1
        return self._es

    @torch.no_grad()
    def _write(self, x) -> None:
        flat = torch.as_tensor(x, dtype=torch.float64)
        start = 0
        for p in self.params:
            p.copy_(flat[start:start + p.numel()].view_as(p).to(device=p.device, dtype=p.dtype))
            start += p.numel()

    @torch.no_grad()
    def step(self, closure=None):
        check_closure(closure, self.accum_steps, type(self).__name__)
        zs = self.zo_state
        es = self.search()
        saved = [p.detach().clone() for p in self.params]
        candidates, losses = es.ask(), []
        for x in candidates:
            self._write(x)
            outs = call_closure(closure, self.accum_steps)
            zs["forwards"] += len(outs)
            losses.append(sum(as_loss(v) for v in outs) / len(outs))
        zs["step"] += 1
        if not all(math.isfinite(v) for v in losses):
            for p, w in zip(self.params, saved):
                p.copy_(w)
            zs["history"].append(None)
            zs["skipped"] += 1
            zs["last_grads"] = []
            self._told += 1
            return torch.tensor(float("nan"))
        zs["history"].append(losses)
        es.tell(candidates, losses)
        self._told += 1
        self._write(es.mean)
        zs["last_grads"] = list(losses)  # the seed log's scalars: a replay tells them again
        return torch.tensor(sum(losses) / len(losses))

    @torch.no_grad()
    def replay_update(self, step: int, grads: list[float], scalars: dict | None = None) -> None:
        """Tell the search the logged losses of ``step`` (steps skipped in between told nothing)."""
        zs = self.zo_state
        zs["history"] += [None] * (step - len(zs["history"]))
        zs["history"].append(list(grads))
        self._write(self.search().mean)
        zs["step"] = step + 1

    def flush(self) -> None:
        """Nothing is deferred (the training loop's interface)."""

    def load_state_dict(self, state_dict: dict) -> None:
        zs = state_dict["state"].get(ZO_KEY, {})
        if zs.get("seed") != self.zo_state["seed"]:
            raise ValueError(f"optimizer state was saved with seed={zs.get('seed')!r}, this optimizer has "
                             f"{self.zo_state['seed']!r}")
        super().load_state_dict(state_dict)
        self.state[ZO_KEY] = dict(self.state[ZO_KEY], history=list(self.state[ZO_KEY]["history"]))
        self._es = None  # rebuilt from the loaded start point and losses
