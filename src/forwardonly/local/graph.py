"""Forward-only training of graph neural networks (ForwardGNN) against their backprop twins.

Park, Kim, Kim & Ko 2024, "Forward Learning of Graph Neural Networks" (ForwardGNN).
Node classification, full batch, on GCN (``D^-1/2 (A+I) D^-1/2 X W``) or GraphSAGE
(mean aggregator: ``X W_self + mean_neighbours(X) W_neigh``) layers; the graph layers
are plain sparse matrix products, so no graph library is needed.

* ``bp``: the layers plus an output graph layer, cross-entropy on the training nodes,
  end to end -- the twin every forward-only variant is measured against.
* ``ff`` (Forward-Forward with label appending): every node's features get a label
  slot; training nodes carry their true label (positive graph) or a random wrong one
  (negative graph), the other nodes zeros. Each layer sees the normalised, detached
  output of the layer below over the whole graph and learns, with its own optimizer,
  to give positive training nodes higher goodness than negative ones (SymBa loss).
  A node is classified by putting each candidate label on every unlabelled node
  (training nodes keep theirs) and taking the label with the highest summed goodness.
* ``sf`` (single forward): one forward pass; layer ``k`` learns by cross-entropy of
  its node embeddings against learned class embeddings, on a detached input. With
  ``top_down`` each layer also reads, as extra input features, the class
  probabilities the layer above gave every node at the previous step (detached): a
  top-down signal that carries label evidence down; inference makes two passes
  (the first supplies the second's top-down signals).

Memory: every forward-only layer's graph is built, used and freed before the next
layer runs. Link prediction is not implemented.

Example::

    cfg = GraphConfig(algo="sf", data="csbm", hidden=[32, 32], epochs=50)
    out = train_graph(cfg)   # {"test_acc": ..., "best_val_acc": ...}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .graph_data import Graph, gcn_adjacency, load_graph, mean_adjacency


@dataclass
class GraphConfig:
    """One node-classification run (``forwardonly local graph``); defaults are Kipf & Welling's GCN recipe."""

    algo: Literal["bp", "ff", "sf"] = "sf"
    layer: Literal["gcn", "sage"] = "gcn"
    data: Literal["cora", "citeseer", "pubmed", "csbm"] = "cora"
    data_dir: str | None = None
    split: Literal["random", "planetoid"] = "random"  # random: ForwardGNN's 64/16/20 % of the nodes
    hidden: list[int] = field(default_factory=lambda: [64])
    epochs: int = 200
    lr: float = 0.01
    weight_decay: float = 5e-4
    dropout: float = 0.5
    patience: int = 50
    seed: int = 0
    label_scale: float = 1.0  # ff: value of the appended one-hot label
    alpha: float = 4.0  # ff: SymBa's scale of the goodness difference
    top_down: bool = False  # sf: feed the layer above's previous class probabilities back as input

    def __post_init__(self):
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ValueError(f"hidden={self.hidden} must be a non-empty list of positive widths")
        if self.lr <= 0 or self.epochs <= 0 or self.patience < 0:
            raise ValueError(f"lr={self.lr}, epochs={self.epochs} must be positive, patience={self.patience} >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


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


def _optimizer(params, cfg: GraphConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(list(params), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


class GraphModel(nn.Module):
    """Base: ``layers`` of :class:`GraphLayer`, ``optimizers``, ``train_step(g, adj)`` and ``scores(g, adj)``."""

    def __init__(self, n_in: int, n_classes: int, cfg: GraphConfig):
        super().__init__()
        self.cfg, self.n_classes = cfg, n_classes
        self.gen = torch.Generator().manual_seed(cfg.seed + 7919)
        self.optimizers: list[torch.optim.Optimizer] = []

    def _drop(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, self.cfg.dropout, self.training) if self.cfg.dropout else h


class GraphBackprop(GraphModel):
    """GCN / GraphSAGE trained end to end by backprop."""

    def __init__(self, n_in, n_classes, cfg):
        super().__init__(n_in, n_classes, cfg)
        d = [n_in, *cfg.hidden, n_classes]
        self.layers = nn.ModuleList(GraphLayer(cfg.layer, a, b) for a, b in pairwise(d))
        self.optimizers = [_optimizer(self.parameters(), cfg)]

    def scores(self, g: Graph, adj: dict) -> torch.Tensor:
        h = g.x
        for layer in self.layers[:-1]:
            h = torch.relu(layer(self._drop(h), adj))
        return self.layers[-1](self._drop(h), adj)

    def train_step(self, g, adj):
        return _step(self.optimizers[0], F.cross_entropy(self.scores(g, adj)[g.train_mask], g.y[g.train_mask]))


class GraphSingleForward(GraphModel):
    """ForwardGNN-SF: each layer learns from its own class-embedding cross-entropy; optional top-down input."""

    def __init__(self, n_in, n_classes, cfg):
        super().__init__(n_in, n_classes, cfg)
        extra = n_classes if cfg.top_down else 0
        d = [n_in, *cfg.hidden]
        self.layers = nn.ModuleList(GraphLayer(cfg.layer, a + extra, b) for a, b in pairwise(d))
        self.classes = nn.ParameterList(nn.Parameter(torch.randn(n_classes, w) / w ** 0.5) for w in cfg.hidden)
        self.optimizers = [_optimizer([*lay.parameters(), c], cfg) for lay, c in zip(self.layers, self.classes)]
        self.signals: list[torch.Tensor] | None = None  # per layer: the layer above's last class probabilities

    def _pass(self, g: Graph, adj: dict, signals, y=None) -> tuple[list[torch.Tensor], list[float]]:
        h, probs, losses = g.x, [], []
        for k, (layer, cls) in enumerate(zip(self.layers, self.classes)):
            inp = torch.cat([h, signals[k]], 1) if signals is not None else h
            with torch.set_grad_enabled(y is not None):
                out = torch.relu(layer(self._drop(inp), adj))  # inp is detached: this graph spans one layer
                logits = out @ cls.T
                if y is not None:
                    losses.append(_step(self.optimizers[k], F.cross_entropy(logits[g.train_mask], y)))
            probs.append(F.softmax(logits.detach(), 1))
            h = out.detach()
        return probs, losses

    def _top_down(self, probs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [*probs[1:], probs[-1]]  # layer k hears layer k + 1; the top layer hears itself

    def _initial(self, n: int) -> list[torch.Tensor]:
        return [torch.full((n, self.n_classes), 1.0 / self.n_classes) for _ in self.layers]

    def train_step(self, g, adj):
        signals = None
        if self.cfg.top_down:
            signals = self.signals if self.signals is not None else self._initial(g.n_nodes)
        probs, losses = self._pass(g, adj, signals, g.y[g.train_mask])
        if self.cfg.top_down:
            self.signals = self._top_down(probs)
        return sum(losses) / len(losses)

    @torch.no_grad()
    def scores(self, g, adj):
        if not self.cfg.top_down:
            return self._pass(g, adj, None)[0][-1]
        first, _ = self._pass(g, adj, self._initial(g.n_nodes))
        return self._pass(g, adj, self._top_down(first))[0][-1]


class GraphForwardForward(GraphModel):
    """ForwardGNN-FF with label appending: positive and negative graphs, layer-local goodness."""

    def __init__(self, n_in, n_classes, cfg):
        super().__init__(n_in, n_classes, cfg)
        d = [n_in + n_classes, *cfg.hidden]
        self.layers = nn.ModuleList(GraphLayer(cfg.layer, a, b) for a, b in pairwise(d))
        self.optimizers = [_optimizer(lay.parameters(), cfg) for lay in self.layers]

    def _input(self, g: Graph, labels: torch.Tensor) -> torch.Tensor:
        """Features with a label slot: ``labels`` one-hot where >= 0, zeros where -1."""
        slot = torch.zeros(g.n_nodes, self.n_classes)
        known = labels >= 0
        slot[known] = F.one_hot(labels[known], self.n_classes).float()
        return torch.cat([g.x, self.cfg.label_scale * slot], 1)

    def _layers(self, h: torch.Tensor, adj: dict):
        for k, layer in enumerate(self.layers):
            z = h if k == 0 else self._rms(h)
            h = torch.relu(layer(self._drop(z), adj))
            yield k, h

    def train_step(self, g, adj):
        m = g.train_mask
        pos_lab = torch.full((g.n_nodes,), -1, dtype=torch.long)
        pos_lab[m] = g.y[m]
        neg_lab = pos_lab.clone()
        shift = torch.randint(1, self.n_classes, (int(m.sum()),), generator=self.gen)
        neg_lab[m] = (g.y[m] + shift) % self.n_classes
        pos, neg, losses = self._input(g, pos_lab), self._input(g, neg_lab), []
        for k, layer in enumerate(self.layers):
            zp, zn = (pos, neg) if k == 0 else (self._rms(pos), self._rms(neg))
            a_pos, a_neg = torch.relu(layer(self._drop(zp), adj)), torch.relu(layer(self._drop(zn), adj))
            g_pos, g_neg = a_pos[m].square().mean(1), a_neg[m].square().mean(1)
            losses.append(_step(self.optimizers[k], F.softplus(self.cfg.alpha * (g_neg - g_pos)).mean()))
            pos, neg = a_pos.detach(), a_neg.detach()
        return sum(losses) / len(losses)

    @staticmethod
    def _rms(h: torch.Tensor) -> torch.Tensor:
        return h / (h.square().mean(1, keepdim=True).sqrt() + 1e-6)

    @torch.no_grad()
    def scores(self, g, adj):
        out = []
        for c in range(self.n_classes):
            lab = torch.full((g.n_nodes,), c, dtype=torch.long)
            lab[g.train_mask] = g.y[g.train_mask]  # transductive: the training labels are known
            total = 0
            for _, h in self._layers(self._input(g, lab), adj):
                total = total + h.square().mean(1)
            out.append(total)
        return torch.stack(out, 1)


GRAPH_METHODS = {"bp": GraphBackprop, "sf": GraphSingleForward, "ff": GraphForwardForward}


def train_graph(cfg: GraphConfig, graph: Graph | None = None, log=None) -> dict:
    """Full-batch training with early stopping on validation accuracy; test scored once, at the best epoch."""
    g = graph if graph is not None else load_graph(cfg.data, cfg.data_dir, cfg.seed, cfg.split)
    adj = {"gcn": gcn_adjacency(g.edge_index, g.n_nodes), "mean": mean_adjacency(g.edge_index, g.n_nodes)}
    torch.manual_seed(cfg.seed)
    model = GRAPH_METHODS[cfg.algo](g.x.shape[1], g.n_classes, cfg)
    best, best_val, best_epoch, bad, seconds, history = None, -1.0, 0, 0, 0.0, []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss = model.train_step(g, adj)
        seconds += time.perf_counter() - t0
        model.eval()
        val = _acc(model.scores(g, adj), g, g.val_mask)
        history.append({"epoch": epoch, "train_loss": loss, "val_acc": val})
        if log:
            log(f"epoch={epoch} train_loss={loss:.4f} val_acc={val:.4f}")
        if val > best_val:
            best_val, best_epoch, bad = val, epoch, 0
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if cfg.patience and bad >= cfg.patience:
                break
    model.load_state_dict(best)
    model.eval()
    return {"algo": cfg.algo, "layer": cfg.layer, "data": cfg.data,
            "test_acc": _acc(model.scores(g, adj), g, g.test_mask), "best_val_acc": best_val,
            "best_epoch": best_epoch, "epochs_run": len(history), "train_seconds": seconds,
            "history": history, "model": model}


def _acc(scores: torch.Tensor, g: Graph, mask: torch.Tensor) -> float:
    return float((scores[mask].argmax(1) == g.y[mask]).float().mean())
