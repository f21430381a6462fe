"""Forward-only training of graph neural networks (ForwardGNN) against their backprop twins.

Park, Wang, Simoulin, Yang, Yang, Rossi, Trivedi & Ahmed, "Forward Learning of Graph Neural
Networks" (ForwardGNN, ICLR 2024). Node classification here, full batch, on GCN
(``D^-1/2 (A+I) D^-1/2 X W``) or GraphSAGE (mean aggregator: ``X W_self + mean_neighbours(X) W_neigh``)
layers; the graph layers are plain sparse matrix products, so no graph library is needed.

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
layer runs. ``task="link"`` trains the same layers for link prediction (:mod:`.graph_link`);
the config, the layer and the epoch loop the two tasks share are in :mod:`.graph_base`.

Example::

    cfg = GraphConfig(algo="sf", data="csbm", hidden=[32, 32], epochs=50)
    out = train_graph(cfg)   # {"test_acc": ..., "best_val_acc": ...}
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .graph_base import GraphConfig, GraphLayer, fit, local_step, make_optimizer
from .graph_data import Graph, gcn_adjacency, load_graph, mean_adjacency
from .graph_link import train_link


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
        self.optimizers = [make_optimizer(self.parameters(), cfg)]

    def scores(self, g: Graph, adj: dict) -> torch.Tensor:
        h = g.x
        for layer in self.layers[:-1]:
            h = torch.relu(layer(self._drop(h), adj))
        return self.layers[-1](self._drop(h), adj)

    def train_step(self, g, adj):
        return local_step(self.optimizers[0], F.cross_entropy(self.scores(g, adj)[g.train_mask], g.y[g.train_mask]))


class GraphSingleForward(GraphModel):
    """ForwardGNN-SF: each layer learns from its own class-embedding cross-entropy; optional top-down input."""

    def __init__(self, n_in, n_classes, cfg):
        super().__init__(n_in, n_classes, cfg)
        extra = n_classes if cfg.top_down else 0
        d = [n_in, *cfg.hidden]
        self.layers = nn.ModuleList(GraphLayer(cfg.layer, a + extra, b) for a, b in pairwise(d))
        self.classes = nn.ParameterList(nn.Parameter(torch.randn(n_classes, w) / w ** 0.5) for w in cfg.hidden)
        self.optimizers = [make_optimizer([*lay.parameters(), c], cfg) for lay, c in zip(self.layers, self.classes)]
        self.signals: list[torch.Tensor] | None = None  # per layer: the layer above's last class probabilities

    def _pass(self, g: Graph, adj: dict, signals, y=None) -> tuple[list[torch.Tensor], list[float]]:
        h, probs, losses = g.x, [], []
        for k, (layer, cls) in enumerate(zip(self.layers, self.classes)):
            inp = torch.cat([h, signals[k]], 1) if signals is not None else h
            with torch.set_grad_enabled(y is not None):
                out = torch.relu(layer(self._drop(inp), adj))  # inp is detached: this graph spans one layer
                logits = out @ cls.T
                if y is not None:
                    losses.append(local_step(self.optimizers[k], F.cross_entropy(logits[g.train_mask], y)))
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
        self.optimizers = [make_optimizer(lay.parameters(), cfg) for lay in self.layers]

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
            losses.append(local_step(self.optimizers[k], F.softplus(self.cfg.alpha * (g_neg - g_pos)).mean()))
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
    """Full-batch training with early stopping on validation; test scored once, at the best epoch.

    ``cfg.task="node"``: accuracy (``test_acc``, ``best_val_acc``); ``"link"``: see
    :func:`.graph_link.train_link` (``test_auc``, ``best_val_auc``).
    """
    g = graph if graph is not None else load_graph(cfg.data, cfg.data_dir, cfg.seed, cfg.split)
    if cfg.task == "link":
        return train_link(cfg, g, log)
    adj = {"gcn": gcn_adjacency(g.edge_index, g.n_nodes), "mean": mean_adjacency(g.edge_index, g.n_nodes)}
    torch.manual_seed(cfg.seed)
    model = GRAPH_METHODS[cfg.algo](g.x.shape[1], g.n_classes, cfg)
    run = fit(model, lambda: model.train_step(g, adj), lambda: _acc(model.scores(g, adj), g, g.val_mask),
              cfg, "val_acc", log)
    return {"algo": cfg.algo, "layer": cfg.layer, "data": cfg.data,
            "test_acc": _acc(model.scores(g, adj), g, g.test_mask), **run, "model": model}


def _acc(scores: torch.Tensor, g: Graph, mask: torch.Tensor) -> float:
    return float((scores[mask].argmax(1) == g.y[mask]).float().mean())
