"""NoProp-CT and NoProp-FM (``noprop.variant``): learning, reproducibility, memory, config, integration."""

from __future__ import annotations

import json
import math

import pytest
import torch

from forwardonly.cli.main import main
from forwardonly.config import load_config
from forwardonly.errors import UserError
from forwardonly.local import LocalConfig, build_model
from forwardonly.local.config import NoPropConfig
from forwardonly.local.memcheck import SavedTensorMeter
from forwardonly.local.noprop import cosine_levels, posterior_coefficients
from forwardonly.local.noprop_ct import EPS, NoPropCT, NoPropFM, ct_level, ct_weight, time_features

# name -> (noprop section, test accuracy it must reach on the blobs below, 15 epochs).
# Measured when added (seed = data seed = 0, 1, 2): dt 0.90/0.95/0.89; ct 0.81/0.88/0.86; ct uniform
# 0.89/0.95/0.91; fm 0.70/0.70/0.72; ct learned 0.80/0.91/0.87; fm learned 0.73/0.72/0.77. Untrained: 0.13-0.37.
CASES = {
    "dt": (NoPropConfig(blocks=4), 0.84),
    "ct": (NoPropConfig(variant="ct", blocks=4), 0.75),
    "ct-uniform": (NoPropConfig(variant="ct", blocks=4, weighting="uniform"), 0.82),
    "fm": (NoPropConfig(variant="fm", blocks=4), 0.62),
    "ct-learned": (NoPropConfig(variant="ct", blocks=4, embedding="learned", embed_dim=8), 0.74),
    "fm-learned": (NoPropConfig(variant="fm", blocks=4, embedding="learned", embed_dim=8), 0.65),
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(seed: int = 0, n: int = 400, classes: int = 4, dim: int = 16):
    """Gaussian blobs that overlap: class means ~ N(0, I), points at distance 1.5 sigma around them."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, dim, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return means[y] + 1.5 * torch.randn(n, dim, generator=gen), y


def _cfg(noprop: NoPropConfig, seed: int = 0, **kw) -> LocalConfig:
    return LocalConfig(algo="noprop", hidden=[32], lr=3e-3, seed=seed, noprop=noprop, **kw)


def _fit(noprop: NoPropConfig, seed: int = 0, epochs: int = 15):
    """Train on 300 blobs (batches of 30), score the other 100; returns (model, losses, acc before, acc after)."""
    x, y = _blobs(seed)
    model = build_model(_cfg(noprop, seed), 16, 4)
    before = model.evaluate(x[300:], y[300:])["acc"]
    gen, losses = torch.Generator().manual_seed(seed), []
    for _ in range(epochs):
        perm = torch.randperm(300, generator=gen)
        losses.append(sum(model.train_step(x[perm[i:i + 30]], y[perm[i:i + 30]]) for i in range(0, 300, 30)))
    return model, losses, before, model.evaluate(x[300:], y[300:])["acc"]


def test_the_variant_picks_the_class():
    for variant, cls in (("ct", NoPropCT), ("fm", NoPropFM)):
        assert type(build_model(_cfg(NoPropConfig(variant=variant)), 16, 4)) is cls
    assert type(build_model(_cfg(NoPropConfig()), 16, 4)).__name__ == "NoProp"


@pytest.mark.parametrize("name", sorted(CASES))
def test_learns_well_above_chance(name):
    _, losses, before, after = _fit(CASES[name][0])
    assert before < 0.4  # chance is 0.25
    assert after >= CASES[name][1], after
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("variant", ["ct", "fm"])
def test_same_seed_same_result(variant):
    a, _, _, acc_a = _fit(NoPropConfig(variant=variant, blocks=3), epochs=2)
    b, _, _, acc_b = _fit(NoPropConfig(variant=variant, blocks=3), epochs=2)
    c, _, _, _ = _fit(NoPropConfig(variant=variant, blocks=3), seed=1, epochs=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert acc_a == acc_b and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    x = _blobs()[0][:50]
    assert torch.equal(a.scores(x), a.scores(x))  # inference draws its noise from its own seeded generator


def _saved(variant: str, blocks: int, conv: bool) -> tuple[int, int]:
    """Autograd-saved peak bytes of one training step, and of one forward + backward of the network alone."""
    kw = {"conv": [4], "hidden": [32]} if conv else {"hidden": [96, 96]}
    model = build_model(LocalConfig(algo="noprop", seed=0, noprop=NoPropConfig(variant=variant, blocks=blocks), **kw),
                        64, 10, (1, 8, 8) if conv else None)
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    with SavedTensorMeter(model) as step:
        model.train_step(x, y)
    assert step.live_count == 0  # nothing left behind after the step
    with SavedTensorMeter(model) as one_pass:
        z = torch.randn(128, model.embed.shape[1])
        model.net(x, z, time_features(torch.rand(128, 1))).sum().backward()
    return step.peak_bytes, one_pass.peak_bytes


@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "conv"])
@pytest.mark.parametrize("variant", ["ct", "fm"])
def test_a_training_step_holds_one_network_pass(variant, conv):
    # measured when added: one pass 242,688 bytes (mlp) / 340,992 (conv); a step holds 5,120 (fm) or 11,152 (ct)
    # more, the loss's own (batch, classes) tensors; a second pass of the network would hold 242,688 more
    peaks = {blocks: _saved(variant, blocks, conv) for blocks in (1, 2, 8)}
    assert peaks[1] == peaks[2] == peaks[8]  # the number of inference steps does not enter training
    step, one_pass = peaks[8]
    assert one_pass <= step <= one_pass + 128 * 4 * 24


@pytest.mark.parametrize("bad, message", [
    ({"variant": "st"}, "noprop.variant must be one of dt, ct, fm, got st"),
    ({"variant": "ct", "weighting": "snr2"}, "noprop.weighting must be snr or uniform, got snr2"),
    ({"variant": "fm", "blocks": 0}, "noprop.blocks must be >= 1, got 0"),
])
def test_bad_values_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        NoPropConfig(**bad)


def test_bad_variant_in_a_config_names_the_value():
    with pytest.raises(UserError, match="noprop.variant='flow' is not one of"):
        load_config(LocalConfig, None, ["algo=noprop", "noprop.variant=flow"])
    assert load_config(LocalConfig, None, ["algo=noprop", "noprop.variant=fm"]).noprop.variant == "fm"


@pytest.mark.parametrize("variant", ["ct", "fm"])
def test_more_steps_keep_the_shapes(variant):
    model = build_model(_cfg(NoPropConfig(variant=variant, blocks=3, embedding="learned", embed_dim=6)), 16, 4)
    x = torch.randn(7, 16)
    for steps in (1, 3, 25):
        assert model.denoise(x, steps).shape == (7, 6)
    assert model.scores(x).shape == (7, 4)
    assert not torch.equal(model.denoise(x, 1), model.denoise(x, 25))


def test_fm_path_ends_at_the_label_and_euler_is_exact_for_a_constant_field():
    model = build_model(_cfg(NoPropConfig(variant="fm", embedding="learned", embed_dim=5)), 16, 3)
    y, z_0 = torch.tensor([0, 2, 1]), torch.randn(3, 5)
    assert torch.equal(model.path(y, torch.ones(3, 1), z_0, model.embed), model.embed[y])
    assert torch.equal(model.path(y, torch.zeros(3, 1), z_0, model.embed), z_0)
    with torch.no_grad():  # the velocity field becomes the constant b: any number of Euler steps lands on z_0 + b
        b = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
        model.net.out.weight.zero_()
        model.net.out.bias.copy_(b)
    x = torch.randn(4, 16)
    start = model.start(4)
    for steps in (1, 4, 30):
        torch.testing.assert_close(model.denoise(x, steps), start + b)


def test_ct_chain_with_a_perfect_prediction_ends_at_the_label():
    """If the network always predicts u, the chain keeps z_k's mean at sqrt(a(t_k)) u: z_1 = sqrt(1 - e) u + r z_0."""
    model = build_model(_cfg(NoPropConfig(variant="ct")), 16, 4)
    with torch.no_grad():  # the network reads class 2 for sure
        model.net.out.weight.zero_()
        model.net.out.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))
    x, start = torch.randn(3, 16), model.start(3)
    for steps in (1, 4, 40):
        levels = model.grid(steps)
        r = math.prod(posterior_coefficients(float(levels[k - 1]), float(levels[k]))[1] for k in range(1, steps + 1))
        assert abs(r) < 0.05
        expected = math.sqrt(1 - EPS) * model.embed[2] + r * start
        torch.testing.assert_close(model.denoise(x, steps), expected.expand(3, 4))


def test_ct_schedule_and_weights():
    t = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    a = ct_level(t)
    assert float(a[0]) == pytest.approx(EPS) and float(a[-1]) == pytest.approx(1 - EPS)
    assert bool((a[1:] > a[:-1]).all())
    torch.testing.assert_close(ct_level(torch.arange(11, dtype=torch.float64) / 10), cosine_levels(10), atol=2e-3, rtol=0)
    w = ct_weight(t)
    assert float(w[0]) == 0.0 and bool((w >= 0).all())
    assert float(torch.trapezoid(w, t)) == pytest.approx(1.0, rel=1e-3)  # mean 1 over t ~ U(0, 1)


@pytest.mark.parametrize("variant", ["ct", "fm"])
def test_flops_one_pass_to_train_t_passes_to_predict(variant):
    flops = {b: build_model(_cfg(NoPropConfig(variant=variant, blocks=b)), 16, 4).flops_per_example() for b in (2, 4)}
    assert flops[2]["train"] == flops[4]["train"]
    head = 2 * 4 * 4
    assert flops[4]["predict"] - head == 2 * (flops[2]["predict"] - head)
    dt = build_model(_cfg(NoPropConfig(blocks=4)), 16, 4).flops_per_example()
    assert flops[4]["train"] < dt["train"] / 2  # one network pass per example, not four


@pytest.mark.parametrize("variant", ["ct", "fm"])
def test_local_train_and_eval_run_the_variant(variant, tmp_path, capsys):
    argv = ["local", "train", "--algo", "noprop", "--data", "digits", "--no-progress", "--out", str(tmp_path),
            f"noprop.variant={variant}", "noprop.blocks=2", "hidden=[16]", "epochs=1", "limit_train=300"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["noprop"]["variant"] == variant
    capsys.readouterr()
    assert main(["local", "eval", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]
