"""Forward-Forward with several negatives per example: distinct wrong labels, drawn like one, compared blockwise."""

from __future__ import annotations

import pytest
import torch

from forwardonly.local import LocalConfig, build_model
from forwardonly.local.config import FFConfig
from forwardonly.local.data import load_dataset
from forwardonly.local.trainer import train


def _model(**ff):
    return build_model(LocalConfig(algo="ff", hidden=[16], ff=FFConfig(**ff)), 8, 4)


@pytest.mark.parametrize("negatives", ["random", "hard"])
def test_k_negatives_are_distinct_wrong_labels(negatives):
    model = _model(negatives=negatives, n_negatives=2)
    x, y = torch.randn(3000, 8), torch.arange(3000) % 4
    neg = model.negative_labels(x, y)
    assert neg.shape == (3000, 2)
    assert not (neg == y[:, None]).any() and not (neg[:, 0] == neg[:, 1]).any()


def test_k_random_negatives_cover_the_wrong_labels_evenly():
    model = _model(n_negatives=2)
    y = torch.zeros(3000, dtype=torch.long)
    counts = torch.bincount(model.negative_labels(torch.randn(3000, 8), y).flatten(), minlength=4) / 3000
    # two of the three wrong labels per row: each appears in 2/3 of the rows
    torch.testing.assert_close(counts, torch.tensor([0.0, 2 / 3, 2 / 3, 2 / 3]), atol=0.04, rtol=0)


def test_k_hard_negatives_follow_the_probe():
    model = _model(negatives="hard", n_negatives=2)
    with torch.no_grad():
        model.probe.weight.zero_()
        model.probe.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 3.0]))  # favours 2, then 3
    y = torch.zeros(2000, dtype=torch.long)
    neg = model.negative_labels(torch.randn(2000, 8), y)
    # first draw: P(2) = e^5 / (e^5 + e^3 + 1) = 0.876; the pair is {2, 3} in most rows
    assert abs(float((neg[:, 0] == 2).float().mean()) - 0.876) < 0.03
    assert float((neg.sort(1).values == torch.tensor([2, 3])).all(1).float().mean()) > 0.8


def test_k_negatives_loss_compares_the_positive_with_each_block():
    model = _model(n_negatives=2)
    g_pos, g_neg = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0, 1.0, 3.0])  # blocks [0, 2] and [1, 3]
    expect = torch.nn.functional.softplus(4.0 * torch.tensor([-1.0, 0.0, 0.0, 1.0])).mean()
    torch.testing.assert_close(model._loss(g_pos, g_neg), expect)


def test_k_negatives_flops_and_bad_values():
    one, three = _model().flops_per_example(), _model(n_negatives=3).flops_per_example()
    fwd = 2 * 12 * 16  # (8 inputs + 4 label units) x 16
    assert three["train"] - one["train"] == 2 * 2 * fwd and three["predict"] == one["predict"]
    with pytest.raises(ValueError, match="n_negatives"):
        FFConfig(n_negatives=0)
    with pytest.raises(ValueError, match="n_negatives=4"):
        _model(n_negatives=4)  # only three wrong labels with four classes


def test_k_negatives_train_and_beat_chance():
    torch.set_num_threads(1)
    cfg = LocalConfig(algo="ff", data="digits", hidden=[64, 64], epochs=6, batch_size=32, patience=0, seed=0,
                      ff=FFConfig(negatives="hard", n_negatives=3))
    out = train(cfg, data=load_dataset("digits"))
    assert out["test_acc"] >= 0.80, out["test_acc"]
    assert out["history"][-1]["train_loss"] < out["history"][0]["train_loss"]
