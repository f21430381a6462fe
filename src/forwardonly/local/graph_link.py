"""Link prediction with ForwardGNN's learners: forward-only GNN layers that score node pairs.

The edges are split by :func:`.graph_data.split_edges` (seeded; ``val_edges`` and ``test_edges``
of the undirected edges held out, each with as many non-edges drawn once); every layer passes
messages over the training edges only, and every epoch draws as many fresh training non-edges as
there are training edges. A pair is scored from its two endpoints' embeddings (the graph
autoencoder's decoder, a dot product), the model chosen by validation ROC-AUC and the test split
scored once, by ROC-AUC and Hits@K.

* ``bp``: the GCN / GraphSAGE stack (ReLU between layers, the last one linear) trained end to end
  by binary cross-entropy of the dot product ``<z_u, z_v>`` on training edges against non-edges.
* ``ff`` (Forward-Forward): a pair's goodness at layer ``k`` is the mean product of its endpoints'
  ReLU activities, ``mean_j a_u[j] a_v[j]``, the pair analogue of FF's mean squared activity. Each
  layer, with its own optimizer and a detached, length-normalised input (so that it cannot read the
  goodness of the layer below from the length of its input), learns by SymBa's loss to give each
  training edge a higher goodness than the non-edge drawn beside it.
* ``sf`` (single forward): one pass; layer ``k`` is its own graph autoencoder: binary cross-entropy
  of ``<z_u, z_v>`` on its pre-activation output ``z``, edges against non-edges; the layer above
  reads ``relu(z)``, detached.

Prediction sums the layers' scores (goodness for ``ff``, logits for ``sf``). Every layer has been
trained to rank edges above non-edges on its own, and layer ``k`` sees ``k``-hop neighbourhoods, so
each is a complete link predictor and the sum lets them vote; it is how ForwardGNN-FF's node
classifier combines its layers too, and for ``sf`` a sum of logits multiplies the layers' odds.
Memory: as for node classification, each forward-only layer's graph is freed before the next runs.

Edges and non-edges are pairs of the same nodes, so ``ff`` needs no second pass over a negative
graph: both variants make one pass over the nodes a layer and differ in what a layer learns from
(``ff``: the goodness of its ReLU activity, contrasted pair by pair; ``sf``: a logistic readout of its
embedding). These are this library's adaptations of ForwardGNN's two node-classification learners,
not a transcription of the paper's link-prediction recipe.

Example (:func:`.graph.train_graph` hands ``task="link"`` to :func:`train_link`)::

    cfg = GraphConfig(task="link", algo="ff", data="csbm", hidden=[32, 32], epochs=100)
    out = train_graph(cfg)   # {"test_auc": ..., "test_hits@50": ..., "best_val_auc": ...}
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .graph_base import GraphConfig, GraphLayer, fit, local_step, make_optimizer
from .graph_data import Graph, gcn_adjacency, mean_adjacency, sample_non_edges, split_edges


def roc_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Area under the ROC curve: the chance that a random positive outscores a random negative, ties half.

    Mann-Whitney's U from mid-ranks (tied scores share the mean of their ranks), so a tie between a
    positive and a negative counts 1/2, and constant scores give 0.5.
    """
    if not len(pos) or not len(neg):
        raise ValueError(f"roc_auc needs positives and negatives, got {len(pos)} and {len(neg)}")
    s = torch.cat([pos, neg]).double()
    if not torch.isfinite(s).all():
        raise ValueError(f"roc_auc: {int((~torch.isfinite(s)).sum())} of {len(s)} scores are not finite")
    _, inv, counts = s.unique(return_inverse=True, return_counts=True)
    counts = counts.double()
    ranks = (counts.cumsum(0) - (counts - 1) / 2)[inv]  # 1-based mid-ranks
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def hits_at_k(pos: torch.Tensor, neg: torch.Tensor, k: int) -> float:
    """Share of positives scored strictly above the ``k``-th highest negative (1.0 with fewer than ``k``)."""
    if len(neg) < k:
        return 1.0
    return float((pos > neg.topk(k).values[-1]).double().mean())


def pair_dot(h: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """``<h_u, h_v>`` for every column ``(u, v)`` of ``pairs``."""
    return (h[pairs[0]] * h[pairs[1]]).sum(1)


def _logistic(z: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    logits = torch.cat([pair_dot(z, pos), pair_dot(z, neg)])
    target = torch.cat([torch.ones(pos.shape[1]), torch.zeros(neg.shape[1])])
    return F.binary_cross_entropy_with_logits(logits, target)


class LinkModel(nn.Module):
    """Base: graph layers ``n_in -> *hidden``, one optimizer a layer, ``train_step(x, adj, pos, neg)`` and
    ``scores(x, adj, pairs)`` (pairs as ``(2, m)`` node indices)."""

    def __init__(self, n_in: int, cfg: GraphConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(GraphLayer(cfg.layer, a, b) for a, b in pairwise([n_in, *cfg.hidden]))
        self.optimizers = [make_optimizer(lay.parameters(), cfg) for lay in self.layers]

    def _drop(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, self.cfg.dropout, self.training) if self.cfg.dropout else h


class LinkBackprop(LinkModel):
    """The graph autoencoder trained end to end: one optimizer, BCE of ``<z_u, z_v>`` at the top layer."""

    def __init__(self, n_in, cfg):
        super().__init__(n_in, cfg)
        self.optimizers = [make_optimizer(self.parameters(), cfg)]

    def embed(self, x: torch.Tensor, adj: dict) -> torch.Tensor:
        h = x
        for k, layer in enumerate(self.layers):
            h = layer(self._drop(h), adj)
            h = torch.relu(h) if k < len(self.layers) - 1 else h
        return h

    def train_step(self, x, adj, pos, neg):
        return local_step(self.optimizers[0], _logistic(self.embed(x, adj), pos, neg))

    @torch.no_grad()
    def scores(self, x, adj, pairs):
        return pair_dot(self.embed(x, adj), pairs)


class LinkForwardForward(LinkModel):
    """ForwardGNN-FF for pairs: layer-local SymBa on the endpoints' goodness, input length-normalised."""

    @staticmethod
    def goodness(a: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return (a[pairs[0]] * a[pairs[1]]).mean(1)

    @staticmethod
    def _input(h: torch.Tensor, k: int) -> torch.Tensor:
        return h if k == 0 else h / (h.square().mean(1, keepdim=True).sqrt() + 1e-6)

    def train_step(self, x, adj, pos, neg):
        h, losses = x, []
        for k, (layer, opt) in enumerate(zip(self.layers, self.optimizers)):
            a = torch.relu(layer(self._drop(self._input(h, k)), adj))  # h is detached: a one-layer graph
            gap = self.goodness(a, neg) - self.goodness(a, pos)  # each edge against the non-edge beside it
            losses.append(local_step(opt, F.softplus(self.cfg.alpha * gap).mean()))
            h = a.detach()
        return sum(losses) / len(losses)

    @torch.no_grad()
    def scores(self, x, adj, pairs):
        h, total = x, torch.zeros(pairs.shape[1])
        for k, layer in enumerate(self.layers):
            h = torch.relu(layer(self._input(h, k), adj))
            total += self.goodness(h, pairs)
        return total


class LinkSingleForward(LinkModel):
    """ForwardGNN-SF for pairs: each layer a graph autoencoder of its own, on a detached input."""

    def train_step(self, x, adj, pos, neg):
        h, losses = x, []
        for layer, opt in zip(self.layers, self.optimizers):
            z = layer(self._drop(h), adj)  # h is detached: this graph spans one layer
            losses.append(local_step(opt, _logistic(z, pos, neg)))
            h = torch.relu(z.detach())  # no graph for the layer above to keep alive
        return sum(losses) / len(losses)

    @torch.no_grad()
    def scores(self, x, adj, pairs):
        h, total = x, torch.zeros(pairs.shape[1])
        for layer in self.layers:
            z = layer(h, adj)
            total += pair_dot(z, pairs)
            h = torch.relu(z)
        return total


LINK_METHODS = {"bp": LinkBackprop, "ff": LinkForwardForward, "sf": LinkSingleForward}


def evaluate_link(model: LinkModel, x, adj, pos, neg, k: int | None = None) -> tuple[float, float | None]:
    """ROC-AUC of edges ``pos`` against non-edges ``neg`` (and Hits@``k`` if ``k`` is given), one pass."""
    s = model.scores(x, adj, torch.cat([pos, neg], 1))
    p, n = s[:pos.shape[1]], s[pos.shape[1]:]
    return roc_auc(p, n), (hits_at_k(p, n, k) if k else None)


def train_link(cfg: GraphConfig, g: Graph, log=None) -> dict:
    """Link prediction on ``g``: early stopping on validation ROC-AUC; test scored once, at the best epoch."""
    split = split_edges(g.edge_index, g.n_nodes, cfg.seed, cfg.val_edges, cfg.test_edges)
    mp = split.message_edges()  # no held-out edge carries a message
    adj = {"gcn": gcn_adjacency(mp, g.n_nodes), "mean": mean_adjacency(mp, g.n_nodes)}
    torch.manual_seed(cfg.seed)
    model = LINK_METHODS[cfg.algo](g.x.shape[1], cfg)
    gen, taken, n_train = torch.Generator().manual_seed(cfg.seed + 7919), split.taken(), split.train.shape[1]

    def step() -> float:
        return model.train_step(g.x, adj, split.train, sample_non_edges(g.n_nodes, n_train, taken, gen))

    def validate() -> float:
        return evaluate_link(model, g.x, adj, split.val, split.val_neg)[0]

    run = fit(model, step, validate, cfg, "val_auc", log)
    auc, hits = evaluate_link(model, g.x, adj, split.test, split.test_neg, cfg.hits_k)
    return {"task": "link", "algo": cfg.algo, "layer": cfg.layer, "data": cfg.data, "test_auc": auc,
            f"test_hits@{cfg.hits_k}": hits, **run, "model": model,
            "edges": {"train": n_train, "val": split.val.shape[1], "test": split.test.shape[1]}}
