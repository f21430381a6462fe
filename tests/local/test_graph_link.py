"""ForwardGNN link prediction: edge split, ROC-AUC and Hits@K, learning a generated graph, memory, config."""

from __future__ import annotations

import json
from itertools import product

import pytest
import torch

from forwardonly.cli.main import main
from forwardonly.errors import UserError
from forwardonly.local.graph import GraphConfig, train_graph
from forwardonly.local.graph_data import (
    Graph,
    csbm,
    gcn_adjacency,
    mean_adjacency,
    pair_keys,
    random_split,
    sample_non_edges,
    split_edges,
)
from forwardonly.local.graph_link import LINK_METHODS, evaluate_link, hits_at_k, roc_auc
from forwardonly.local.memcheck import SavedTensorMeter


@pytest.fixture(scope="module")
def easy():
    """400 nodes in 6 blocks, 1,457 edges, 91 % of them inside a block: a pair's block predicts its edge.

    Knowing only the blocks, ROC-AUC is at most about 0.87 (an edge is same-block 91 % of the time, a
    random pair 17 %); the features carry the block weakly (signal 0.3), so an untrained net scores less.
    """
    torch.set_num_threads(1)
    x, ei, y = csbm(n=400, n_classes=6, p_in=0.1, p_out=0.002, signal=0.3, seed=0)
    return Graph("csbm", x, ei, y, *random_split(len(y), 0), n_classes=6)


def _keys(pairs, n):
    return set(pair_keys(pairs, n).tolist())


def test_edge_split_is_seeded_disjoint_and_hides_held_out_edges(easy):
    n, s = easy.n_nodes, split_edges(easy.edge_index, easy.n_nodes, seed=3)
    assert (s.train.shape[1], s.val.shape[1], s.test.shape[1]) == (1238, 73, 146)  # 85 / 5 / 10 % of 1,457
    assert s.val_neg.shape == s.val.shape and s.test_neg.shape == s.test.shape
    for p in (s.train, s.val, s.val_neg, s.test, s.test_neg):
        assert (p[0] < p[1]).all() and len(_keys(p, n)) == p.shape[1]  # canonical, no repeats
    train, val, test = _keys(s.train, n), _keys(s.val, n), _keys(s.test, n)
    assert train | val | test == _keys(easy.edge_index, n) and len(train) + len(val) + len(test) == 1457
    negs = _keys(s.val_neg, n) | _keys(s.test_neg, n)
    assert len(negs) == 73 + 146 and not negs & _keys(easy.edge_index, n)  # non-edges; val, test apart
    mp = s.message_edges()
    assert _keys(mp, n) == train and not _keys(mp, n) & (val | test)  # no held-out edge carries a message
    assert sorted(map(tuple, mp.T.tolist())) == sorted(map(tuple, mp.flip(0).T.tolist()))  # both directions
    again, other = split_edges(easy.edge_index, n, seed=3), split_edges(easy.edge_index, n, seed=4)
    for a, b in zip((s.train, s.val, s.val_neg, s.test, s.test_neg), (again.train, again.val, again.val_neg,
                                                                       again.test, again.test_neg)):
        assert torch.equal(a, b)
    assert _keys(other.test, n) != test


def test_training_non_edges_avoid_training_edges_and_held_out_pairs(easy):
    n, s = easy.n_nodes, split_edges(easy.edge_index, easy.n_nodes, seed=0)
    taken = s.taken()
    neg = sample_non_edges(n, 1238, taken, torch.Generator().manual_seed(1))
    assert neg.shape == (2, 1238) and (neg[0] < neg[1]).all() and len(_keys(neg, n)) == 1238
    assert not _keys(neg, n) & set(taken.tolist())
    with pytest.raises(UserError, match="k=7 non-edges"):
        sample_non_edges(4, 7, torch.zeros(0, dtype=torch.long), torch.Generator())  # 4 nodes: 6 pairs
    with pytest.raises(UserError, match="3 undirected edges cannot be split"):
        split_edges(torch.tensor([[0, 1, 2], [1, 2, 3]]), 4, seed=0)


def test_roc_auc_and_hits_on_hand_made_scores():
    t = torch.tensor
    assert roc_auc(t([3.0, 2.0]), t([1.0, 0.0])) == 1.0 and roc_auc(t([0.0]), t([1.0, 2.0])) == 0.0
    assert roc_auc(t([1.0, 1.0]), t([1.0, 1.0, 1.0])) == 0.5  # constant scores: chance
    assert roc_auc(t([0.9, 0.5]), t([0.5, 0.1])) == 0.875  # pairs: 1, 1, a tie (1/2), 1
    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(5, (40,), generator=gen).float(), torch.randint(4, (30,), generator=gen).float()
    brute = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean()
    assert roc_auc(pos, neg) == pytest.approx(float(brute), abs=1e-12)  # many ties
    with pytest.raises(ValueError, match="1 of 3 scores are not finite"):
        roc_auc(t([1.0, float("nan")]), t([0.0]))
    with pytest.raises(ValueError, match="got 0 and 1"):
        roc_auc(t([]), t([0.0]))
    assert hits_at_k(t([3.0, 2.0, 1.0]), t([2.5, 0.0, 0.0]), 1) == pytest.approx(1 / 3)
    assert hits_at_k(t([3.0, 2.0, 1.0]), t([2.5, 0.0, 0.0]), 2) == 1.0
    assert hits_at_k(t([2.5, 2.0]), t([2.5, 0.0]), 1) == 0.0  # a tie with the K-th negative is not a hit
    assert hits_at_k(t([0.0]), t([1.0]), 5) == 1.0  # fewer negatives than K


# measured on this machine when added (hidden [32, 32], 40 epochs, dropout 0.5, seed 0): test ROC-AUC
# bp 0.839, ff 0.824, sf 0.837; sage: bp 0.850, ff 0.845, sf 0.817; the same nets untrained: 0.53-0.78.
@pytest.mark.parametrize("algo, layer", list(product(["bp", "ff", "sf"], ["gcn", "sage"])))
def test_every_link_variant_learns_the_generated_graph(easy, algo, layer):
    cfg = GraphConfig(task="link", algo=algo, layer=layer, data="csbm", hidden=[32, 32], epochs=40,
                      patience=0)
    out = train_graph(cfg, graph=easy)
    assert out["test_auc"] > 0.8 and out["best_val_auc"] > 0.8, (out["test_auc"], out["best_val_auc"])
    assert 0.5 < out["test_hits@50"] <= 1.0 and out["edges"] == {"train": 1238, "val": 73, "test": 146}
    h = out["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert out["best_val_auc"] == max(e["val_auc"] for e in h) == h[out["best_epoch"] - 1]["val_auc"]


def test_the_best_epoch_is_restored_before_test(easy):
    cfg = GraphConfig(task="link", algo="ff", data="csbm", hidden=[16], epochs=30, patience=5)
    out = train_graph(cfg, graph=easy)
    assert out["epochs_run"] == out["best_epoch"] + 5 or out["epochs_run"] == 30  # patience stops it
    s = split_edges(easy.edge_index, easy.n_nodes, cfg.seed)
    mp = s.message_edges()
    adj = {"gcn": gcn_adjacency(mp, easy.n_nodes), "mean": mean_adjacency(mp, easy.n_nodes)}
    assert evaluate_link(out["model"], easy.x, adj, s.val, s.val_neg)[0] == out["best_val_auc"]


def test_one_layer_single_forward_is_the_backprop_autoencoder(easy):
    # one layer: sf's local loss is bp's loss, on the same weights (same seed); nothing may differ
    kw = {"task": "link", "data": "csbm", "hidden": [16], "epochs": 5, "patience": 0}
    bp, sf = (train_graph(GraphConfig(algo=a, **kw), graph=easy) for a in ("bp", "sf"))
    assert [e["train_loss"] for e in bp["history"]] == [e["train_loss"] for e in sf["history"]]
    assert bp["test_auc"] == sf["test_auc"]


def _saved_peak(algo, depth, g):
    cfg = GraphConfig(task="link", algo=algo, hidden=[24] * depth, dropout=0.0)
    model = LINK_METHODS[algo](g.x.shape[1], cfg)
    s = split_edges(g.edge_index, g.n_nodes, 0)
    mp = s.message_edges()
    adj = {"gcn": gcn_adjacency(mp, g.n_nodes), "mean": mean_adjacency(mp, g.n_nodes)}
    neg = sample_non_edges(g.n_nodes, s.train.shape[1], s.taken(), torch.Generator().manual_seed(0))
    with SavedTensorMeter(model) as meter:
        model.train_step(g.x, adj, s.train, neg)
    assert meter.live_count == 0
    return meter.peak_bytes


@pytest.mark.parametrize("algo", ["sf", "ff"])
def test_forward_only_link_layers_keep_one_layer_alive(algo, easy):
    assert _saved_peak(algo, 5, easy) <= _saved_peak(algo, 2, easy)
    # backprop keeps every layer's activations: at least one 400 x 24 float32 matrix more a layer
    assert _saved_peak("bp", 5, easy) - _saved_peak("bp", 2, easy) >= 3 * 400 * 24 * 4


@pytest.mark.parametrize("bad, match", [({"val_edges": 0.0}, "val_edges=0.0"),
                                        ({"test_edges": 0.96}, "test_edges=0.96"),
                                        ({"hits_k": 0}, "hits_k=0"),
                                        ({"top_down": True}, "top_down=True is for task=node"),
                                        ({"split": "planetoid"}, "split=planetoid is a node split")])
def test_bad_link_config_values_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        GraphConfig(task="link", **bad)


def test_graph_cli_runs_link_prediction_and_rejects_bad_values(capsys):
    assert main(["local", "graph", "task=link", "algo=ff", "data=csbm", "hidden=[8]", "epochs=3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "link" and 0.0 <= out["test_auc"] <= 1.0 and out["epochs_run"] == 3
    assert "best_val_auc" in out and "test_hits@50" in out
    for bad, named in [("val_edges=1.5", "val_edges=1.5"), ("task=edge", "'edge'")]:
        assert main(["local", "graph", "--data", "csbm", "task=link", bad]) == 2
        err = capsys.readouterr().err
        assert named in err and err.count("\n") == 1, err
