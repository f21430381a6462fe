"""What ForwardGNN's two tasks share: the config, the graph layer, per-layer optimizers and the epoch loop.

Node classification (:mod:`.graph`) and link prediction (:mod:`.graph_link`) train the same
GCN / GraphSAGE layers with the same optimizer recipe and select the model the same way:
full-batch epochs, early stopping on a validation metric, the best epoch's weights restored
before the test split is scored once. :func:`fit` is that loop; each task supplies one
training step and one validation score.

Example::

    cfg = GraphConfig(task="link", algo="ff", data="csbm", hidden=[32, 32])
    layer = GraphLayer(cfg.layer, 32, 16)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn


@dataclass
class GraphConfig:
    """One ``forwardonly local graph`` run; defaults are Kipf & Welling's GCN recipe.

    ``task`` picks node classification (``node``: the node split ``split``, accuracy) or link
    prediction (``link``: ``val_edges`` and ``test_edges`` of the undirected edges held out,
    ROC-AUC and Hits@``hits_k``; see :mod:`.graph_link`).
    """

    algo: Literal["bp", "ff", "sf"] = "sf"
    task: Literal["node", "link"] = "node"
    layer: Literal["gcn", "sage"] = "gcn"
    data: Literal["cora", "citeseer", "pubmed", "csbm"] = "cora"
    data_dir: str | None = None
    split: Literal["random", "planetoid"] = "random"  # node: random is ForwardGNN's 64/16/20 % of the nodes
    hidden: list[int] = field(default_factory=lambda: [64])
    epochs: int = 200
    lr: float = 0.01
    weight_decay: float = 5e-4
    dropout: float = 0.5
    patience: int = 50
    seed: int = 0
    label_scale: float = 1.0  # ff, node: value of the appended one-hot label
    alpha: float = 4.0  # ff: SymBa's scale of the goodness difference
    top_down: bool = False  # sf, node: feed the layer above's previous class probabilities back as input
    val_edges: float = 0.05  # link: fraction of the undirected edges held out for validation
    test_edges: float = 0.10  # link: fraction held out for test
    hits_k: int = 50  # link: K of Hits@K (the share of test edges scored above the K-th best test non-edge)

    def __post_init__(self):
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ValueError(f"hidden={self.hidden} must be a non-empty list of positive widths")
        if self.lr <= 0 or self.epochs <= 0 or self.patience < 0:
            raise ValueError(f"lr={self.lr}, epochs={self.epochs} must be positive, patience={self.patience} >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        held_out = self.val_edges + self.test_edges
        if not (0.0 < self.val_edges < 1.0 and 0.0 < self.test_edges < 1.0 and held_out < 1.0):
            raise ValueError(f"val_edges={self.val_edges}, test_edges={self.test_edges} must be in (0, 1) "
                             f"and leave training edges (sum < 1)")
        if self.hits_k < 1:
            raise ValueError(f"hits_k={self.hits_k} must be >= 1")
        if self.task == "link" and self.top_down:
            raise ValueError(f"top_down={self.top_down} is for task=node (class probabilities), not link")
        if self.task == "link" and self.split != "random":
            raise ValueError(f"split={self.split} is a node split; task=link splits the edges")


class GraphLayer(nn.Module):
    """A GCN or GraphSAGE (mean) layer on a fixed sparse adjacency."""

    def __init__(self, kind: str, n_in: int, n_out: int):
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(n_in, n_out)
        self.neigh = nn.Linear(n_in, n_out, bias=False) if kind == "sage" else None

    def forward(self, x: torch.Tensor, adj: dict) -> torch.Tensor:
        if self.kind == "gcn":
            return torch.sparse.mm(adj["gcn"], self.lin(x))
        return self.lin(x) + self.neigh(torch.sparse.mm(adj["mean"], x))


def make_optimizer(params, cfg: GraphConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(list(params), lr=cfg.lr, weight_decay=cfg.weight_decay)


def local_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """Backward through ``loss``'s graph (one layer's, for a forward-only method), step, free the grads."""
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def fit(model: nn.Module, step: Callable[[], float], validate: Callable[[], float], cfg: GraphConfig,
        metric: str, log=None) -> dict:
    """Run ``step`` for up to ``cfg.epochs`` epochs, early stopping on ``validate`` (higher is better).

    The best epoch's weights are loaded back into ``model`` (left in eval mode). Returns
    ``best_<metric>``, ``best_epoch``, ``epochs_run``, ``train_seconds`` (the steps only) and
    ``history`` (one ``{"epoch", "train_loss", metric}`` a epoch).
    """
    best, best_val, best_epoch, bad, seconds, history = None, float("-inf"), 0, 0, 0.0, []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss = step()
        seconds += time.perf_counter() - t0
        model.eval()
        val = validate()
        history.append({"epoch": epoch, "train_loss": loss, metric: val})
        if log:
            log(f"epoch={epoch} train_loss={loss:.4f} {metric}={val:.4f}")
        if val > best_val:
            best_val, best_epoch, bad = val, epoch, 0
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if cfg.patience and bad >= cfg.patience:
                break
    model.load_state_dict(best)
    model.eval()
    return {f"best_{metric}": best_val, "best_epoch": best_epoch, "epochs_run": len(history),
            "train_seconds": seconds, "history": history}
