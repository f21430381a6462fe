"""Citation graphs for node classification and link prediction: the LINQS text release, read without
unpickling.

Cora, CiteSeer and PubMed are not shipped by any package registry this project can reach
(PyPI, Debian, npm), so they are read from ``data_dir`` holding the LINQS text release:

* ``<name>.content``: one node a line, ``<id> <feature> ... <feature> <label>`` (whitespace);
* ``<name>.cites``: one edge a line, ``<cited id> <citing id>``.

Edges are made undirected; edges to ids without a content line are dropped (CiteSeer has some).
Splits, seeded: ``random`` (ForwardGNN's: 64 % / 16 % / 20 % of the nodes for training,
validation and test) or ``planetoid`` (20 training nodes per class, 500 validation and
1,000 test nodes from the rest). ``csbm`` is a generated contextual stochastic block model,
for plumbing tests only.

Link prediction splits the edges instead (:func:`split_edges`, seeded): a share of the undirected
edges is held out for validation and for test, each with as many non-edges of the whole graph
(drawn once), and message passing uses the training edges only. Training non-edges are drawn
afresh every epoch (:func:`sample_non_edges`) from the pairs that are neither training edges nor
held out: a held-out pair, edge or not, never appears in training.

Example::

    g = load_graph("csbm", seed=0)
    g.x.shape, g.n_classes, int(g.train_mask.sum())
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError

GRAPHS = ("cora", "citeseer", "pubmed", "csbm")


@dataclass
class Graph:
    """Node features, undirected edges (both directions), labels and boolean split masks."""

    name: str
    x: torch.Tensor
    edge_index: torch.Tensor
    y: torch.Tensor
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    test_mask: torch.Tensor
    n_classes: int

    @property
    def n_nodes(self) -> int:
        return len(self.y)


def gcn_adjacency(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """``D^-1/2 (A + I) D^-1/2`` as a sparse COO tensor (Kipf & Welling's propagation rule)."""
    loops = torch.arange(n).repeat(2, 1)
    ei = torch.cat([edge_index, loops], 1).unique(dim=1)
    deg = torch.zeros(n).index_add_(0, ei[0], torch.ones(ei.shape[1]))
    w = deg[ei[0]].rsqrt() * deg[ei[1]].rsqrt()
    return torch.sparse_coo_tensor(ei, w, (n, n), check_invariants=False).coalesce()


def mean_adjacency(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """Row-normalised adjacency without self loops: GraphSAGE's mean aggregator."""
    ei = edge_index.unique(dim=1)
    deg = torch.zeros(n).index_add_(0, ei[0], torch.ones(ei.shape[1])).clamp_min(1)
    return torch.sparse_coo_tensor(ei, 1.0 / deg[ei[0]], (n, n), check_invariants=False).coalesce()


@dataclass
class EdgeSplit:
    """Undirected node pairs, one column ``(u, v)`` with ``u < v`` each, split for link prediction."""

    n_nodes: int
    train: torch.Tensor
    val: torch.Tensor
    val_neg: torch.Tensor
    test: torch.Tensor
    test_neg: torch.Tensor

    def message_edges(self) -> torch.Tensor:
        """The training edges in both directions: the only graph the layers pass messages over."""
        return torch.cat([self.train, self.train.flip(0)], 1)

    def taken(self) -> torch.Tensor:
        """Keys (``u * n + v``, sorted) of the pairs that are no training non-edge: edges, held-out pairs."""
        pairs = torch.cat([self.train, self.val, self.val_neg, self.test, self.test_neg], 1)
        return pair_keys(pairs, self.n_nodes).unique()


def pair_keys(pairs: torch.Tensor, n: int) -> torch.Tensor:
    """One integer per unordered pair: ``min * n + max``."""
    return torch.minimum(pairs[0], pairs[1]) * n + torch.maximum(pairs[0], pairs[1])


def sample_non_edges(n: int, k: int, taken: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``k`` distinct unordered pairs ``(u < v)``, uniform over those whose key is not in ``taken``."""
    free = n * (n - 1) // 2 - len(taken)
    if k > free:
        raise UserError(f"k={k} non-edges asked for, only {free} pairs are free in a {n}-node graph "
                        "(a graph this dense cannot give as many non-edges as edges: lower val_edges/test_edges)")
    keys = torch.zeros(0, dtype=torch.long)
    while len(keys) < k:
        m = 2 * (k - len(keys)) + 16  # rejection sampling: a sparse graph rejects few
        u, v = torch.randint(n, (m,), generator=gen), torch.randint(n, (m,), generator=gen)
        cand = torch.minimum(u, v) * n + torch.maximum(u, v)
        cand = cand[(u != v) & ~torch.isin(cand, taken) & ~torch.isin(cand, keys)]
        uniq, inv = cand.unique(return_inverse=True)
        first = torch.full((len(uniq),), len(cand)).scatter_reduce_(0, inv, torch.arange(len(cand)), "amin")
        keys = torch.cat([keys, cand[first.sort().values]])  # first draws kept, in the order drawn
    keys = keys[:k]
    return torch.stack([keys // n, keys % n])


def split_edges(edge_index: torch.Tensor, n: int, seed: int, val: float = 0.05,
                test: float = 0.10) -> EdgeSplit:
    """Seeded split of the undirected edges into train / val / test, held-out non-edges drawn once."""
    lo, hi = torch.minimum(edge_index[0], edge_index[1]), torch.maximum(edge_index[0], edge_index[1])
    edges = torch.stack([lo, hi])[:, lo != hi].unique(dim=1)
    m = edges.shape[1]
    n_val, n_test = round(val * m), round(test * m)
    if n_val < 1 or n_test < 1 or n_val + n_test >= m:
        raise UserError(f"{m} undirected edges cannot be split {val:g} / {test:g} into non-empty "
                        f"train, val and test sets")
    gen = torch.Generator().manual_seed(seed)
    edges = edges[:, torch.randperm(m, generator=gen)]
    neg = sample_non_edges(n, n_val + n_test, pair_keys(edges, n).unique(), gen)
    return EdgeSplit(n, edges[:, n_val + n_test:], edges[:, :n_val], neg[:, :n_val],
                     edges[:, n_val:n_val + n_test], neg[:, n_val:])


def planetoid_split(y: torch.Tensor, n_classes: int, seed: int, per_class: int = 20,
                    n_val: int = 500, n_test: int = 1000) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    train = torch.cat([perm[y[perm] == c][:per_class] for c in range(n_classes)])
    rest = perm[~torch.isin(perm, train)]
    masks = [torch.zeros(len(y), dtype=torch.bool) for _ in range(3)]
    for m, idx in zip(masks, (train, rest[:n_val], rest[n_val:n_val + n_test])):
        m[idx] = True
    return tuple(masks)


def random_split(n: int, seed: int, fractions=(0.64, 0.16)) -> tuple[torch.Tensor, ...]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a, b = round(fractions[0] * n), round((fractions[0] + fractions[1]) * n)
    masks = [torch.zeros(n, dtype=torch.bool) for _ in range(3)]
    for m, idx in zip(masks, (perm[:a], perm[a:b], perm[b:])):
        m[idx] = True
    return tuple(masks)


def read_linqs(root: Path, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, undirected edge_index, labels) from ``<name>.content`` and ``<name>.cites``."""
    content, cites = root / f"{name}.content", root / f"{name}.cites"
    for p in (content, cites):
        if not p.is_file():
            raise UserError(f"{name}: {p} not found. No package registry ships the citation graphs; "
                            f"pass --data-dir DIR holding the LINQS text release ({name}.content, {name}.cites)")
    ids, feats, labels = {}, [], []
    for i, line in enumerate(content.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3:
            raise UserError(f"{content}:{i}: expected '<id> <features...> <label>', got {line[:60]!r}")
        try:
            feats.append([float(v) for v in parts[1:-1]])
        except ValueError:
            raise UserError(f"{content}:{i}: a feature is not a number") from None
        if feats and len(feats[-1]) != len(feats[0]):
            raise UserError(f"{content}:{i}: {len(feats[-1])} features, the first line has {len(feats[0])}")
        ids[parts[0]] = len(ids)
        labels.append(parts[-1])
    classes = {c: k for k, c in enumerate(sorted(set(labels)))}
    edges = []
    for i, line in enumerate(cites.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise UserError(f"{cites}:{i}: expected '<cited id> <citing id>', got {line[:60]!r}")
        if parts[0] in ids and parts[1] in ids and parts[0] != parts[1]:
            edges.append((ids[parts[0]], ids[parts[1]]))
    ei = torch.tensor(edges, dtype=torch.long).T if edges else torch.zeros(2, 0, dtype=torch.long)
    ei = torch.cat([ei, ei.flip(0)], 1).unique(dim=1)
    return torch.tensor(feats), ei, torch.tensor([classes[c] for c in labels])


def csbm(n: int = 600, n_classes: int = 3, n_features: int = 32, p_in: float = 0.05, p_out: float = 0.005,
         signal: float = 0.6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A contextual stochastic block model: same-class edges more likely, class-shifted Gaussian features."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    means = torch.randn(n_classes, n_features, generator=gen)
    x = signal * means[y] + torch.randn(n, n_features, generator=gen)
    same = y[:, None] == y[None, :]
    prob = torch.where(same, torch.tensor(p_in), torch.tensor(p_out))
    a = torch.rand(n, n, generator=gen) < prob
    a = torch.triu(a, 1)
    ei = a.nonzero().T
    return x, torch.cat([ei, ei.flip(0)], 1), y


def load_graph(name: str, data_dir: str | None = None, seed: int = 0, split: str = "random") -> Graph:
    """Load ``name`` (one of :data:`GRAPHS`) with row-normalised features and a seeded ``split``."""
    if split not in ("random", "planetoid"):
        raise UserError(f"split={split!r}: choose 'random' or 'planetoid'")
    if name == "csbm":
        x, ei, y = csbm(seed=seed)
        n_classes = int(y.max()) + 1
        masks = planetoid_split(y, n_classes, seed, per_class=20, n_val=150, n_test=300) if split == "planetoid" \
            else random_split(len(y), seed)
    elif name in GRAPHS:
        if not data_dir:
            raise UserError(f"{name}: no package registry ships the citation graphs; pass --data-dir DIR "
                            f"holding the LINQS text release ({name}.content, {name}.cites)")
        x, ei, y = read_linqs(Path(data_dir), name)
        n_classes = int(y.max()) + 1
        masks = planetoid_split(y, n_classes, seed) if split == "planetoid" else random_split(len(y), seed)
    else:
        raise UserError(f"unknown graph {name!r}; choose from {list(GRAPHS)}")
    x = x / x.sum(1, keepdim=True).clamp_min(1e-12) if name != "csbm" else x  # bag-of-words rows sum to 1
    return Graph(name, x.float(), ei, y, *masks, n_classes=n_classes)
