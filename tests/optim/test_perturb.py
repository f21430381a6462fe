"""Directions, the perturbation context and the unbiasedness of the estimator."""

import math

import pytest
import torch

from forwardonly.optim import CHUNK, ZOSGD, Directions, Perturbation, direction


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_chunked_generation_equals_whole_tensor(kind):
    d = Directions(seed=11, kind=kind)
    p = torch.empty(2 * CHUNK + 12345)
    whole = d.full(p, step=3, probe=1, param_index=2)
    pieces = torch.cat([z.clone() for _, _, z in d.chunks(p, 3, 1, 2)])
    assert torch.equal(whole, pieces)
    assert not torch.equal(whole, d.full(p, 3, 1, 3)), "another parameter gets another direction"
    assert not torch.equal(whole, d.full(p, 4, 1, 2)), "another step gets another direction"
    assert not torch.equal(whole, d.full(p, 3, 0, 2)), "another probe gets another direction"


def test_direction_statistics():
    z = direction((1_000_000,), "rademacher", 0, 0, 0, 0)
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    g = direction((1_000_000,), "gaussian", 0, 0, 0, 0)
    assert abs(float(g.mean())) < 5 / math.sqrt(g.numel())
    assert float(g.var()) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_perturbation_never_writes_the_weights(dtype):
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3).to(dtype)
    x = torch.randn(4, 5, dtype=dtype)
    items = list(enumerate(lin.parameters()))
    before = [p.detach().clone() for p in lin.parameters()]
    d = Directions(1)
    with Perturbation(items, d, 0, [(0, 0.1)]):
        out = lin(x)
    expect = torch.nn.functional.linear(x, lin.weight + 0.1 * d.full(lin.weight, 0, 0, 0),
                                        lin.bias + 0.1 * d.full(lin.bias, 0, 0, 1))
    torch.testing.assert_close(out, expect)
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))
    with pytest.raises(RuntimeError):
        with Perturbation(items, d, 0, [(0, 0.1)]):
            lin(torch.randn(4, 6, dtype=dtype))  # shape error inside the forward
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("two_sided", [True, False])
def test_estimator_is_unbiased_on_a_quadratic(kind, two_sided):
    """Mean of N estimates g z of f(w) = 1/2 w'Aw + b'w is within a 5-sigma bound of grad f."""
    g = torch.Generator().manual_seed(0)
    d = 6
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = m @ m.T / d + torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True)
    closure = lambda: 0.5 * w @ a @ w + b @ w  # noqa: E731
    true = (a @ w + b).detach()
    eps = 1e-4 if two_sided else 1e-6
    opt = ZOSGD([w], lr=0.0, eps=eps, direction=kind, two_sided=two_sided, seed=1)
    n = 4000
    est = torch.empty(n, d, dtype=torch.float64)
    for t in range(n):
        _, (gk,) = opt.estimate(closure, t)
        est[t] = gk * opt.directions.full(w, t, 0, 0)
    mean, std = est.mean(0), est.std(0)
    bound = 5 * std / math.sqrt(n) + (0.5 * eps * float(a.abs().sum()) if not two_sided else 0)
    assert torch.all((mean - true).abs() <= bound), (mean, true, bound)
