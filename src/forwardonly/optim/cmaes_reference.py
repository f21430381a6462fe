"""Reference twin of :class:`~forwardonly.optim.CMAES`: ask, evaluate, tell, on one live search."""

from __future__ import annotations

import math

import torch

from .cmaes import _search
from .evaluate import as_loss, call_closure


class CMAESReference(torch.optim.Optimizer):
    """CMA-ES the way the ``cma`` documentation writes its loop: one live search, candidates written into the
    parameters with ``vector_to_parameters``, no record of the past (so no resume or replay); the fast class
    rebuilds its search from the logged losses instead. Same arguments as :class:`~forwardonly.optim.CMAES`."""

    def __init__(self, params, lr=1.0, sigma=0.5, population=0, max_dim=1000, seed=0, accum_steps=1):
        super().__init__(params, dict(lr=lr))
        self.params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        x0 = torch.nn.utils.parameters_to_vector(self.params).detach().double()
        self.es, self.accum_steps = _search(x0, sigma, population, lr, seed), accum_steps
        self.state["zo"] = {"step": 0, "skipped": 0, "forwards": 0}

    def _set(self, x):
        vec = torch.as_tensor(x, dtype=torch.float64).to(self.params[0].dtype)
        torch.nn.utils.vector_to_parameters(vec, self.params)

    @torch.no_grad()
    def step(self, closure):
        before = torch.nn.utils.parameters_to_vector(self.params).clone()
        xs, fs = self.es.ask(), []
        for x in xs:
            self._set(x)
            outs = call_closure(closure, self.accum_steps)
            self.state["zo"]["forwards"] += len(outs)
            fs.append(sum(as_loss(v) for v in outs) / len(outs))
        self.state["zo"]["step"] += 1
        if not all(math.isfinite(f) for f in fs):
            torch.nn.utils.vector_to_parameters(before, self.params)
            self.state["zo"]["skipped"] += 1
            return torch.tensor(float("nan"))
        self.es.tell(xs, fs)
        self._set(self.es.mean)
        return torch.tensor(sum(fs) / len(fs))
