"""Antithetic ES (forwardonly.optim.ES): rank shaping, a non-differentiable objective, its reference twin
bit for bit, a seed-log replay, bad options."""

import copy
import json

import pytest
import torch

from forwardonly.optim import ES, ESReference
from forwardonly.optim.es import centered_ranks


def test_centered_ranks_span_minus_half_to_half_and_average_ties():
    assert centered_ranks([3.0, 1.0, 2.0]) == [0.5, -0.5, 0.0]
    assert centered_ranks([0.25, 0.25, 0.5, 0.0]) == [0.0, 0.0, 0.5, -0.5]  # ranks 1 and 2 share 1.5
    assert centered_ranks([1.0, 1.0]) == [0.0, 0.0]  # a tie moves nothing


def toy_classifier(seed=0):
    """Two Gaussian blobs in 4-d and a linear classifier that starts at chance."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (256,), generator=g)
    x = torch.randn(256, 4, generator=g) + torch.tensor([1.5, -1.0, 0.5, 0.0]) * (2 * y[:, None] - 1)
    model = torch.nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.0, 0.5]))  # always predicts class 1
    return model, x, y


def error_rate(model, x, y):
    return lambda: 1.0 - (model(x).argmax(-1) == y).float().mean()


@pytest.mark.parametrize("direction", ["gaussian", "rademacher"])
def test_es_learns_a_non_differentiable_objective(direction):
    model, x, y = toy_classifier()
    closure = error_rate(model, x, y)
    start = float(closure())
    assert 0.4 < start < 0.6
    opt = ES(model.parameters(), lr=0.02, population=8, sigma=0.1, seed=0, direction=direction)
    for _ in range(60):
        opt.step(closure)
    assert float(closure()) < 0.1  # the blobs are separable to ~5 % error
    assert opt.zo_state["forwards"] == 60 * 16


def test_rank_shaping_ignores_a_monotone_transform_of_the_loss():
    runs = []
    for transform in (lambda v: v, lambda v: torch.exp(3 * v) - 7):
        model, x, y = toy_classifier()
        opt = ES(model.parameters(), lr=0.02, population=4, sigma=0.1, seed=2)
        def closure(model=model, x=x, y=y, transform=transform):
            return transform(torch.nn.functional.cross_entropy(model(x), y))

        for _ in range(10):
            opt.step(closure)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def ce(model, x, y):
    return lambda: torch.nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("direction", ["gaussian", "rademacher"])
@pytest.mark.parametrize("impl", ["auto", "plain"])
def test_fast_equals_reference_bitwise(direction, impl):
    model, x, y = toy_classifier()
    twin = copy.deepcopy(model)
    kw = dict(lr=1e-4, population=3, sigma=1e-2, weight_decay=0.1, seed=4, direction=direction)
    opt, ref = ES(model.parameters(), impl=impl, **kw), ESReference(twin.parameters(), **kw)
    for _ in range(25):
        a = opt.step(ce(model, x, y))
        b = ref.step(ce(twin, x, y))
        assert float(a) == float(b)
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), twin.parameters()))


def test_seed_log_entries_replay_bitwise_after_a_json_round_trip():
    model, x, y = toy_classifier()
    base = copy.deepcopy(model)
    opt = ES(model.parameters(), lr=1e-4, population=4, sigma=1e-2, seed=9)
    log = []
    for t in range(15):
        opt.step(ce(model, x, y))
        log.append(json.loads(json.dumps({"step": t, "grads": opt.zo_state["last_grads"],
                                           "scalars": opt.zo_state["last_scalars"]})))
    assert sorted(log[0]["scalars"]) == ["loss_minus", "loss_plus"] and len(log[0]["scalars"]["loss_plus"]) == 4
    replay = ES(base.parameters(), lr=1e-4, population=4, sigma=1e-2, seed=9)
    for e in log:
        replay.replay_update(e["step"], e["grads"], e["scalars"])
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), base.parameters()))


@pytest.mark.parametrize("kwargs, message", [
    ({"population": 0}, "Invalid population: 0"),
    ({"population": 2.5}, "Invalid population: 2.5"),
    ({"sigma": 0.0}, "Invalid sigma: 0.0"),
    ({"sigma": -1.0}, "Invalid sigma: -1.0"),
    ({"sigma": float("nan")}, "Invalid sigma: nan"),
    ({"population": 4, "q": 2}, "Invalid population=4 with q=2"),
    ({"two_sided": False}, "Invalid two_sided=False"),
    ({"lr": "auto"}, "Invalid lr='auto'"),
])
def test_bad_options_are_named(kwargs, message):
    model, _, _ = toy_classifier()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ES(model.parameters(), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
