"""Generic behaviour of every method, driven by one table (adding a method = adding a row)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forwardonly.config import load_config
from forwardonly.errors import UserError
from forwardonly.local import METHODS, LocalConfig, build_model
from forwardonly.local.config import CaFoConfig, FFConfig, FGConfig
from forwardonly.local.data import load_dataset
from forwardonly.local.memcheck import SavedTensorMeter
from forwardonly.local.trainer import train

# name -> (config overrides, test accuracy it must reach on digits in a few epochs)
CASES = {
    "bp": ({}, 0.93),
    "mf": ({}, 0.93),
    "ff": ({"epochs": 12}, 0.80),
    "ff-hard": ({"algo": "ff", "epochs": 12, "ff": FFConfig(negatives="hard")}, 0.80),
    "cafo": ({"epochs": 1}, 0.93),
    "cafo-ce": ({"algo": "cafo", "cafo": CaFoConfig(predictor="ce")}, 0.80),
    "dfa": ({}, 0.90),
    "drtp": ({"activation": "tanh"}, 0.80),
    "fg": ({"fg": FGConfig(mode="local")}, 0.90),
    "fg-weight": ({"algo": "fg", "fg": FGConfig(mode="weight"), "lr": 3e-3, "epochs": 12}, 0.30),
}
LOCAL = ["mf", "ff", "dfa", "drtp", "fg", "cafo"]


def _cfg(name, **kw):
    over, _ = CASES[name]
    base = {"algo": name, "data": "digits", "hidden": [64, 64], "epochs": 6, "batch_size": 32,
            "patience": 0, "seed": 0, **over, **kw}
    return LocalConfig(**base)


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    return load_dataset("digits")


def test_table_covers_every_method():
    assert set(METHODS) <= {c[0].get("algo", n) for n, c in CASES.items()} | set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_beats_chance_and_lowers_loss(name, digits):
    cfg = _cfg(name)
    out = train(cfg, data=digits)
    assert out["test_acc"] >= CASES[name][1], out["test_acc"]
    hist = out["history"]
    if cfg.algo != "cafo":  # closed-form CaFo fits in one epoch; its loss is before the solve
        assert hist[-1]["train_loss"] < hist[0]["train_loss"]


@pytest.mark.parametrize("name", ["ff", "ff-hard", "dfa", "fg", "fg-weight", "cafo"])
def test_same_seed_same_weights(name, digits):
    a = train(_cfg(name, epochs=2), data=digits)["model"].state_dict()
    b = train(_cfg(name, epochs=2), data=digits)["model"].state_dict()
    c = train(_cfg(name, epochs=2, seed=1), data=digits)["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def _saved_peak(name, depth):
    cfg = _cfg(name, hidden=[96] * depth)
    model = build_model(cfg, 64, 10)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 64, generator=gen), torch.randint(0, 10, (128,), generator=gen)
    with SavedTensorMeter(model) as meter:
        model.train_step(x, y)
    assert meter.live_count == 0  # nothing left behind after the step
    return meter.peak_bytes


@pytest.mark.parametrize("name", LOCAL)
def test_local_methods_keep_one_layer_alive(name):
    # A graph spanning layers would grow with depth; a local step holds one layer's worth.
    # FF's linear probe reads the concatenated (detached) features of all layers, so its
    # one-layer graph may hold a wider input: at most 4 more layers x 96 units x 128 rows.
    allowance = 128 * 96 * 4 * 4 if name == "ff" else 0
    assert _saved_peak(name, 6) <= _saved_peak(name, 2) + allowance


def test_backprop_graph_grows_with_depth():
    assert _saved_peak("bp", 6) > 2 * _saved_peak("bp", 2)  # the meter does see whole-network graphs


@pytest.mark.parametrize("name", ["mf", "ff", "dfa", "drtp", "fg"])
def test_layer_inputs_are_detached(name):
    model = build_model(_cfg(name, hidden=[32, 32, 32]), 64, 10)
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].requires_grad))
             for layer in model.layers]
    model.train_step(torch.randn(16, 64), torch.randint(0, 10, (16,)))
    for h in hooks:
        h.remove()
    assert seen and not any(seen)


def test_dfa_matches_textbook_update():
    """One SGD step of the recomputing DFA equals the rule written out by hand."""
    cfg = _cfg("dfa", hidden=[20, 12], optimizer="sgd", lr=0.1)
    model = build_model(cfg, 8, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(10, 8, generator=gen), torch.randint(0, 4, (10,), generator=gen)
    # reference: full forward, keep everything
    w = [(before[f"layers.{i}.weight"], before[f"layers.{i}.bias"]) for i in range(3)]
    h0 = x
    a1 = h0 @ w[0][0].T + w[0][1]
    h1 = torch.relu(a1)
    a2 = h1 @ w[1][0].T + w[1][1]
    h2 = torch.relu(a2)
    e = (F.softmax(h2 @ w[2][0].T + w[2][1], 1) - F.one_hot(y, 4).float()) / len(y)
    d1 = (e @ before["feedback_0"]) * (a1 > 0)
    d2 = (e @ before["feedback_1"]) * (a2 > 0)
    expect = {"layers.0.weight": w[0][0] - 0.1 * d1.T @ h0, "layers.1.weight": w[1][0] - 0.1 * d2.T @ h1,
              "layers.2.weight": w[2][0] - 0.1 * e.T @ h2, "layers.0.bias": w[0][1] - 0.1 * d1.sum(0)}
    model.train_step(x, y)
    for k, v in expect.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_forward_gradient_is_unbiased_direction():
    """The jvp directional derivative equals the backprop gradient dotted with the tangent."""
    model = build_model(_cfg("fg", hidden=[16], fg=FGConfig(mode="weight")), 8, 3)
    x, y = torch.randn(5, 8), torch.randint(0, 3, (5,))
    from torch.func import jvp

    ws = tuple(layer.weight.detach() for layer in model.layers)
    bs = tuple(layer.bias.detach() for layer in model.layers)
    tw, tb = tuple(torch.randn_like(w) for w in ws), tuple(torch.randn_like(b) for b in bs)
    _, d = jvp(lambda w, b: model._full_loss(x, y, w, b), (ws, bs), (tw, tb))
    loss = F.cross_entropy(model.scores(x), y)
    grads = torch.autograd.grad(loss, [*(m.weight for m in model.layers), *(m.bias for m in model.layers)])
    expect = sum((g * t).sum() for g, t in zip(grads, (*tw, *tb)))
    torch.testing.assert_close(d, expect, rtol=1e-4, atol=1e-6)


def test_cafo_closed_form_is_ridge_solution(digits):
    cfg = _cfg("cafo", hidden=[32], epochs=1)
    model = train(cfg, data=digits)["model"]
    with torch.no_grad():
        h = torch.relu(model.blocks[0](digits.x_train)).double()
    hb = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
    reg = torch.eye(hb.shape[1], dtype=h.dtype) * cfg.cafo.ridge
    reg[-1, -1] = 0
    sol = torch.linalg.solve(hb.T @ hb + reg, hb.T @ F.one_hot(digits.y_train, 10).double()).float()
    torch.testing.assert_close(model.predictors[0].weight, sol[:-1].T, rtol=1e-4, atol=1e-4)


def test_cafo_blocks_stay_frozen(digits):
    cfg = _cfg("cafo", epochs=2)
    init = {k: v.clone() for k, v in build_model(cfg, 64, 10).state_dict().items() if k.startswith("blocks")}
    after = train(cfg, data=digits)["model"].state_dict()
    assert all(torch.equal(v, after[k]) for k, v in init.items())


def test_ff_reports_both_predictions(digits):
    out = train(_cfg("ff", epochs=2), data=digits)
    assert {"test_acc_goodness", "test_acc_probe", "test_acc_combined"} <= set(out)
    assert out["test_acc"] == out["test_acc_goodness"]


def test_ff_combined_prediction_adds_the_two_log_probabilities(digits):
    model = train(_cfg("ff", epochs=2, ff=FFConfig(predict="combined", alpha=3.0)), data=digits)["model"]
    x, y = digits.x_test[:300], digits.y_test[:300]
    g, p = model.goodness_scores(x), model.probe(model._features(x))
    want = F.log_softmax(3.0 * g, 1) + F.log_softmax(p, 1)
    torch.testing.assert_close(model.scores(x), want)
    res = model.evaluate(x, y)
    assert res["acc"] == res["acc_combined"] == pytest.approx(int((want.argmax(1) == y).sum()) / len(y))
    assert model.flops_per_example()["predict"] > build_model(_cfg("ff"), 64, 10).flops_per_example()["predict"]
    with pytest.raises(UserError, match="ff.predict='vote' is not one of \\['goodness', 'probe', 'combined'\\]"):
        load_config(LocalConfig, None, ["algo=ff", "ff.predict=vote"])


def test_ff_hard_negatives_follow_the_probe():
    """Hard negatives are never the true label and are drawn from the probe's softmax."""
    model = build_model(_cfg("ff", hidden=[16], ff=FFConfig(negatives="hard")), 8, 4)
    with torch.no_grad():
        model.probe.weight.zero_()
        model.probe.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))  # favours class 2
    x, y = torch.randn(4000, 8), torch.arange(4000) % 4
    neg = model.negative_labels(x, y)
    assert not (neg == y).any()
    # y != 2: P(2) = e^5 / (e^5 + 2) = 0.9867; y == 2: uniform over the other three
    share = (neg[y != 2] == 2).float().mean()
    assert abs(float(share) - 0.9867) < 0.01, share
    counts = torch.bincount(neg[y == 2], minlength=4).float() / 1000
    torch.testing.assert_close(counts, torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3]), atol=0.05, rtol=0)


def test_ff_random_negatives_are_uniform_wrong_labels():
    model = build_model(_cfg("ff", hidden=[16]), 8, 4)
    y = torch.zeros(3000, dtype=torch.long)
    counts = torch.bincount(model.negative_labels(torch.randn(3000, 8), y), minlength=4).float() / 3000
    torch.testing.assert_close(counts, torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3]), atol=0.04, rtol=0)


@pytest.mark.parametrize("norm, mean_square", [("length", 1 / 24), ("rms", 1.0)])
def test_ff_normalisation_between_layers(norm, mean_square):
    model = build_model(_cfg("ff", hidden=[24, 8], ff=FFConfig(norm=norm)), 8, 4)
    seen = []
    model.layers[1].register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    model.goodness_scores(torch.randn(32, 8))
    h = torch.cat(seen)
    torch.testing.assert_close(h.square().mean(1), torch.full((len(h),), mean_square), rtol=1e-4, atol=0)
