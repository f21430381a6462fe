"""Forward-Forward with ff.dropout: inverted dropout on every layer's inputs, shared by a positive and its negatives."""

from __future__ import annotations

import math

import pytest
import torch

from forwardonly.local import LocalConfig, build_model
from forwardonly.local.config import FFConfig
from forwardonly.local.data import load_dataset
from forwardonly.local.trainer import train


def _model(**ff):
    torch.manual_seed(0)
    return build_model(LocalConfig(algo="ff", hidden=[16, 12, 8], ff=FFConfig(norm="rms", **ff)), 10, 4)


def test_masks_drop_the_share_asked_for_and_rescale():
    model = _model(dropout=0.3)
    masks = model._dropout_masks(4000)
    assert [m.shape for m in masks] == [(4000, 10), (4000, 16), (4000, 12)]  # pixels, then hidden inputs
    for m in masks:
        assert torch.unique(m).tolist() == [0.0, pytest.approx(1 / 0.7)]
        assert abs(float((m == 0).float().mean()) - 0.3) < 0.01
    assert _model()._dropout_masks(5) is None


@pytest.mark.parametrize("extra", [{}, {"n_negatives": 2}, {"collab": True}])
def test_a_positive_and_its_negatives_share_the_mask(extra):
    # with the "negative" label equal to the true one, a shared mask makes both goodnesses equal,
    # so every layer's SymBa loss is softplus(0) = log 2 exactly; independent masks would not
    model = _model(dropout=0.5, **extra)
    x, y = torch.randn(32, 10), torch.arange(32) % 4
    k = extra.get("n_negatives", 1)
    model.negative_labels = lambda xb, yb: yb if k == 1 else torch.stack([yb] * k, 1)
    assert model.train_step(x, y) == pytest.approx(math.log(2), abs=1e-6)


def test_dropout_is_training_only():
    model = _model(dropout=0.5)
    x, y = torch.randn(64, 10), torch.arange(64) % 4
    first = model.evaluate(x, y)
    torch.testing.assert_close(model.goodness_scores(x), model.goodness_scores(x))
    assert model.evaluate(x, y) == first
    with torch.no_grad():  # hard negatives are drawn from the probe on undropped features
        logits = model.probe(model._features(x))
    torch.testing.assert_close(logits, model.probe(model._features(x)))


def test_dropout_changes_the_step_and_bad_values_are_named():
    x, y = torch.randn(32, 10), torch.arange(32) % 4
    steps = []
    for p in (0.0, 0.5):
        model = _model(dropout=p)
        model.negative_labels = lambda xb, yb: (yb + 1) % 4
        before = model.layers[1].weight.detach().clone()
        model.train_step(x, y)
        steps.append(model.layers[1].weight.detach() - before)
    assert not torch.allclose(steps[0], steps[1])
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ff.dropout"):
            FFConfig(dropout=bad)


def test_dropout_trains_and_beats_chance():
    torch.set_num_threads(1)
    cfg = LocalConfig(algo="ff", data="digits", hidden=[64, 64], epochs=6, batch_size=32, patience=0, seed=0,
                      ff=FFConfig(negatives="hard", norm="rms", label_scale=5.0, dropout=0.2))
    out = train(cfg, data=load_dataset("digits"))
    assert out["test_acc"] >= 0.80, out["test_acc"]  # measured 0.916 (loss 0.66 -> 0.36)
    assert out["history"][-1]["train_loss"] < out["history"][0]["train_loss"]
