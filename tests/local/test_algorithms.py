"""Generic behaviour of every method, driven by one table (adding a method = adding a row)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from forwardonly.config import load_config
from forwardonly.errors import UserError
from forwardonly.local import METHODS, LocalConfig, build_model
from forwardonly.local.config import CaFoConfig, FFConfig, FGConfig, NoPropConfig, TPConfig
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
    # measured on this machine when added (seed 0): tpsgd 0.929, l1 0.913, noprop 0.962 (learned) / 0.947
    # (one-hot), cafo-dfa 0.927 (ce) / 0.920 (mse); conv nets (8x8 digits, conv [8, 16] + 32): bp 0.900,
    # mf 0.800, ff 0.776 (12 epochs), tpsgd 0.378, cafo (dfa, ce) 0.824, noprop (conv [8] + 32, 3 blocks) 0.940
    "tpsgd": ({"activation": "tanh"}, 0.88),
    "tpsgd-l1": ({"algo": "tpsgd", "activation": "tanh", "tp": TPConfig(loss="l1")}, 0.86),
    "noprop": ({"noprop": NoPropConfig(blocks=4, embedding="learned", embed_dim=16)}, 0.92),
    "noprop-onehot": ({"algo": "noprop", "noprop": NoPropConfig(blocks=4)}, 0.90),
    # one network for every step learns slower per epoch than DT's four (measured when added: ct 0.787, fm 0.767)
    "noprop-ct": ({"algo": "noprop", "noprop": NoPropConfig(variant="ct", blocks=4)}, 0.70),
    "noprop-fm": ({"algo": "noprop", "noprop": NoPropConfig(variant="fm", blocks=4)}, 0.70),
    "cafo-dfa": ({"algo": "cafo", "cafo": CaFoConfig(predictor="ce", blocks="dfa")}, 0.88),
    "cafo-dfa-mse": ({"algo": "cafo", "cafo": CaFoConfig(predictor="mse", blocks="dfa")}, 0.87),
    "bp-conv": ({"algo": "bp", "conv": [8, 16], "hidden": [32]}, 0.85),
    "mf-conv": ({"algo": "mf", "conv": [8, 16], "hidden": [32]}, 0.72),
    "ff-conv": ({"algo": "ff", "conv": [8, 16], "hidden": [32], "epochs": 12,
                 "ff": FFConfig(negatives="hard", norm="rms")}, 0.68),
    "tpsgd-conv": ({"algo": "tpsgd", "conv": [8, 16], "hidden": [32], "activation": "tanh"}, 0.28),
    "cafo-conv": ({"algo": "cafo", "conv": [8, 16], "hidden": [32], "cafo": CaFoConfig(predictor="ce", blocks="dfa")},
                  0.75),
    "noprop-conv": ({"algo": "noprop", "conv": [8], "hidden": [32], "noprop": NoPropConfig(blocks=3)}, 0.88),
}
LOCAL = ["mf", "ff", "dfa", "drtp", "fg", "cafo", "tpsgd", "cafo-dfa"]
CONV_LOCAL = ["mf-conv", "ff-conv", "tpsgd-conv", "cafo-conv"]


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


def _saved_peak(name, depth, conv=False):
    if conv:  # depth conv blocks of 8 channels on 16x16 images, no dense layer but the output
        cfg, n_in, shape = _cfg(name, conv=[8] * depth, hidden=[]), 256, (1, 16, 16)
        if cfg.algo == "ff":
            cfg = _cfg(name, conv=[8] * depth, hidden=[16])
    else:
        cfg, n_in, shape = _cfg(name, hidden=[96] * depth), 64, None
    model = build_model(cfg, n_in, 10, shape)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, n_in, generator=gen), torch.randint(0, 10, (128,), generator=gen)
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


@pytest.mark.parametrize("name", CONV_LOCAL)
def test_local_conv_nets_keep_one_block_alive(name):
    # each block halves the map, so the first block's graph is the largest a local step ever holds;
    # FF's probe reads every block's (detached, normalised) map: at most 2 more 8x8 maps per example
    allowance = 128 * 8 * 8 * 8 * 4 * 2 if name == "ff-conv" else 0
    assert _saved_peak(name, 3, conv=True) <= _saved_peak(name, 1, conv=True) + allowance


def test_backprop_graph_grows_with_depth():
    assert _saved_peak("bp", 6) > 2 * _saved_peak("bp", 2)  # the meter does see whole-network graphs
    assert _saved_peak("bp-conv", 3, conv=True) > _saved_peak("bp-conv", 1, conv=True) * 1.2


def test_noprop_memory_is_flat_in_the_number_of_blocks():
    def peak(blocks):
        model = build_model(_cfg("noprop", noprop=NoPropConfig(blocks=blocks)), 64, 10)
        x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
        with SavedTensorMeter(model) as meter:
            model.train_step(x, y)
        assert meter.live_count == 0
        return meter.peak_bytes

    assert peak(8) == peak(2)


@pytest.mark.parametrize("name", ["mf", "ff", "dfa", "drtp", "fg", "tpsgd"])
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


def test_tpsgd_matches_the_layer_local_rule():
    """One SGD step: each hidden layer moves down the gradient of mse(f(W h + b), onehot(y) P) alone."""
    cfg = _cfg("tpsgd", hidden=[6, 5], optimizer="sgd", lr=0.1, activation="tanh")
    model = build_model(cfg, 4, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    w0 = before["layers.0.weight"].clone().requires_grad_(True)
    t0 = F.one_hot(y, 3).float() @ before["projection_0"]
    a0 = torch.tanh(x @ w0.T + before["layers.0.bias"])
    (g0,) = torch.autograd.grad(F.mse_loss(a0, t0), [w0])
    w1 = before["layers.1.weight"].clone().requires_grad_(True)
    a1 = torch.tanh(a0.detach() @ w1.T + before["layers.1.bias"])  # the pre-update output of layer 0
    (g1,) = torch.autograd.grad(F.mse_loss(a1, F.one_hot(y, 3).float() @ before["projection_1"]), [w1])
    model.train_step(x, y)
    after = model.state_dict()
    torch.testing.assert_close(after["layers.0.weight"], before["layers.0.weight"] - 0.1 * g0)
    torch.testing.assert_close(after["layers.1.weight"], before["layers.1.weight"] - 0.1 * g1)
    assert torch.equal(after["projection_0"], before["projection_0"])  # targets are fixed


def test_tpsgd_conv_targets_have_the_block_shape():
    model = build_model(_cfg("tpsgd", conv=[4, 6], hidden=[8]), 64, 10, (1, 8, 8))
    y = torch.tensor([3, 3, 5])
    t = model.target(1, y)
    assert t.shape == (3, 6, 2, 2) and torch.equal(t[0], t[1]) and not torch.equal(t[0], t[2])
    assert not torch.equal(t[0, :, 0, 0], t[0, :, 1, 1])  # a random map
    per_channel = build_model(_cfg("tpsgd", conv=[4, 6], hidden=[8], tp=TPConfig(conv_target="channel")), 64, 10,
                              (1, 8, 8))
    t = per_channel.target(1, y)
    assert t.shape == (3, 6, 2, 2) and torch.equal(t[0, :, 0, 0], t[0, :, 1, 1])  # the same at every pixel
    assert per_channel.projection_1.shape == (10, 6) and per_channel.target(2, y).shape == (3, 8)


def test_noprop_posterior_mean_keeps_the_marginal():
    """Averaged over z_{t-1} ~ q(z_{t-1} | u), the chain's mean step gives z_t's marginal mean sqrt(a_t) u."""
    model = build_model(_cfg("noprop", noprop=NoPropConfig(blocks=6)), 8, 4)
    a = model.levels.double()
    assert a[0] < 0.01 and a[-1] > 0.99 and bool((a[1:] > a[:-1]).all())
    for t in range(1, 7):
        c_u, c_z = model.posterior_coefficients(t)
        assert c_u + c_z * float(a[t - 1].sqrt()) == pytest.approx(float(a[t].sqrt()), rel=1e-5)


def test_noprop_blocks_learn_independently():
    """Block 2's update does not depend on block 1's weights: no gradient and no input flows between blocks."""
    cfg = _cfg("noprop", hidden=[16], noprop=NoPropConfig(blocks=3))
    a, b = build_model(cfg, 8, 4), build_model(cfg, 8, 4)
    with torch.no_grad():
        for p in b.blocks[0].parameters():
            p.mul_(3.0).add_(1.0)
    x, y = torch.randn(20, 8), torch.randint(0, 4, (20,))
    a.train_step(x, y)
    b.train_step(x, y)
    for k in (1, 2):
        for pa, pb in zip(a.blocks[k].parameters(), b.blocks[k].parameters()):
            assert torch.equal(pa, pb)


def test_cafo_dfa_block_update_is_the_predictor_error_through_a_fixed_matrix():
    cfg = _cfg("cafo-dfa", hidden=[12], optimizer="sgd", lr=0.1, cafo=CaFoConfig(predictor="ce", blocks="dfa"))
    model = build_model(cfg, 5, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    z = x @ before["blocks.0.weight"].T + before["blocks.0.bias"]
    h = torch.relu(z)
    err = (F.softmax(h @ before["predictors.0.weight"].T + before["predictors.0.bias"], 1)
           - F.one_hot(y, 3).float()) / len(y)
    delta = (err @ before["feedback_0"]) * (z > 0)
    model.train_step(x, y)
    torch.testing.assert_close(model.state_dict()["blocks.0.weight"], before["blocks.0.weight"] - 0.1 * delta.T @ x)
    assert torch.equal(model.state_dict()["feedback_0"], before["feedback_0"])


def test_ff_conv_label_enters_as_channels():
    model = build_model(_cfg("ff", conv=[4], hidden=[8], ff=FFConfig(label_scale=3.0)), 64, 10, (1, 8, 8))
    h = model._embed(torch.zeros(2, 64), torch.tensor([2, 7]))
    assert h.shape == (2, 11, 8, 8)
    assert float(h[0, 3]. min()) == 3.0 and float(h[0, 1:].sum()) == 3.0 * 64 and float(h[1, 8].max()) == 3.0


def test_conv_needs_image_data_and_a_conv_method():
    with pytest.raises(ValueError, match="needs image data"):
        build_model(_cfg("mf", conv=[4]), 64, 10)
    with pytest.raises(ValueError, match="algo=dfa has no conv version"):
        build_model(_cfg("dfa", conv=[4]), 64, 10, (1, 8, 8))
    with pytest.raises(UserError, match="cafo.blocks=dfa needs a predictor trained by gradient"):
        load_config(LocalConfig, None, ["algo=cafo", "cafo.blocks=dfa"])
