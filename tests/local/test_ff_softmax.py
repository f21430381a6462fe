"""Forward-Forward with ff.loss=softmax: each layer's cross-entropy over the goodness of every label."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from forwardonly.local import LocalConfig, build_model
from forwardonly.local.config import FFConfig
from forwardonly.local.data import load_dataset
from forwardonly.local.trainer import train


def test_softmax_loss_is_cross_entropy_of_scaled_goodness():
    torch.manual_seed(0)
    model = build_model(LocalConfig(algo="ff", hidden=[8], ff=FFConfig(loss="softmax", alpha=2.0)), 6, 4)
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 1])
    expect = F.cross_entropy(2.0 * model.goodness_scores(x), y)  # one layer: its goodness is the score
    before = model.layers[0].weight.detach().clone()
    assert abs(model.train_step(x, y) - float(expect)) < 1e-6
    assert not torch.equal(model.layers[0].weight, before)  # and it stepped


def test_softmax_flops_count_one_pass_per_class():
    sym = build_model(LocalConfig(algo="ff", hidden=[16]), 8, 4).flops_per_example()
    soft = build_model(LocalConfig(algo="ff", hidden=[16], ff=FFConfig(loss="softmax")), 8, 4).flops_per_example()
    fwd = 2 * 12 * 16
    assert soft["train"] - sym["train"] == (4 - 2) * 2 * fwd and soft["predict"] == sym["predict"]


def test_softmax_trains_and_beats_chance():
    torch.set_num_threads(1)
    cfg = LocalConfig(algo="ff", data="digits", hidden=[64, 64], epochs=8, batch_size=32, patience=0, seed=0,
                      ff=FFConfig(loss="softmax", norm="rms", peer=0.03))
    out = train(cfg, data=load_dataset("digits"))
    assert out["test_acc"] >= 0.80, out["test_acc"]  # measured 0.876 (loss 2.27 -> 0.92)
    assert out["history"][-1]["train_loss"] < out["history"][0]["train_loss"]
