"""CMA-ES (forwardonly.optim.CMAES): fits a known per-label bias on a non-differentiable objective, equals its
reference twin, resumes and replays bitwise, refuses a parameter set that is too large."""

import copy

import pytest
import torch

pytest.importorskip("cma")

from forwardonly.optim import CMAES, CMAESReference  # noqa: E402


def biased_scores(seed=0, n=400):
    """Scores of a 3-label classifier that is right up to a per-label offset ``-shift``: adding the bias
    ``shift`` (up to a common constant) recovers every label."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    clean = torch.randn(n, 3, generator=g) + 3.0 * torch.nn.functional.one_hot(y, 3)
    shift = torch.tensor([2.0, -1.5, 0.5])
    return clean - shift, y, shift


def test_cma_es_fits_a_known_label_bias_on_accuracy():
    scores, y, shift = biased_scores()
    bias = torch.nn.Parameter(torch.zeros(3))

    def error():
        return 1.0 - ((scores + bias).argmax(-1) == y).float().mean()

    best = 1.0 - ((scores + shift).argmax(-1) == y).float().mean()
    start = float(error())
    assert start > float(best) + 0.2  # the offset costs a lot
    opt = CMAES([bias], sigma=1.0, seed=0)
    for _ in range(40):
        opt.step(error)
    assert float(error()) <= float(best) + 0.02
    centred = bias.detach() - bias.detach().mean()  # only differences between labels matter
    torch.testing.assert_close(centred, shift - shift.mean(), atol=0.6, rtol=0)


def test_fast_equals_reference_bitwise():
    scores, y, _ = biased_scores(1)
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    opt, ref = CMAES([a], sigma=0.5, seed=3), CMAESReference([b], sigma=0.5, seed=3)
    for _ in range(15):
        la = opt.step(lambda: torch.nn.functional.cross_entropy(scores + a, y))
        lb = ref.step(lambda: torch.nn.functional.cross_entropy(scores + b, y))
        assert float(la) == float(lb)
    assert torch.equal(a, b)


def test_resume_and_replay_rebuild_the_search_bitwise():
    scores, y, _ = biased_scores(2)

    def run(steps, p, opt):
        for _ in range(steps):
            opt.step(lambda: torch.nn.functional.cross_entropy(scores + p, y))

    p = torch.nn.Parameter(torch.zeros(3))
    straight = CMAES([p], seed=5)
    run(12, p, straight)

    q = torch.nn.Parameter(torch.zeros(3))
    first = CMAES([q], seed=5)
    run(5, q, first)
    state = copy.deepcopy(first.state_dict())
    q2 = torch.nn.Parameter(q.detach().clone())
    resumed = CMAES([q2], seed=5)
    resumed.load_state_dict(state)
    run(7, q2, resumed)
    assert torch.equal(p, q2)

    r = torch.nn.Parameter(torch.zeros(3))
    replay = CMAES([r], seed=5)
    for t, losses in enumerate(straight.zo_state["history"]):
        replay.replay_update(t, losses)
    assert torch.equal(p, r)
    with pytest.raises(ValueError, match="seed=5"):
        CMAES([torch.nn.Parameter(torch.zeros(3))], seed=6).load_state_dict(state)


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": 0.0}, "Invalid sigma: 0.0"),
    ({"population": 1}, "Invalid population: 1"),
    ({"lr": 2.0}, "Invalid learning rate: 2.0"),
    ({"max_dim": 10}, "Invalid parameter set for cma-es: 12 values"),
])
def test_bad_options_and_too_many_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CMAES([torch.nn.Parameter(torch.zeros(3, 4))], **kwargs)


def test_the_global_numpy_rng_is_left_alone():
    import numpy as np

    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    p = torch.nn.Parameter(torch.zeros(4))
    opt = CMAES([p], seed=1)
    for _ in range(3):
        opt.step(lambda: (p - 1).pow(2).sum())
    assert (np.random.get_state()[1] == before).all()
