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


# ------------------------------------------------------- fused linear/embedding and blockwise generation
class _TiedLM(torch.nn.Module):
    """Embedding, a biased hidden layer and an output layer tied to the embedding (as in SmolLM2)."""

    def __init__(self, vocab, dim):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.hidden = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.norm(torch.tanh(self.hidden(self.embed(ids)))))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_fused_perturbation_matches_whole_copies(kind, monkeypatch):
    """Blockwise linear and row-wise embedding give the forward of the whole perturbed copies,
    over chunk borders (the embedding spans two chunks) and with several terms; weights untouched."""
    from forwardonly.optim.perturb import fused as _fused

    monkeypatch.setattr(_fused, "LINEAR_BLOCK", 3000)  # many row blocks, borders inside chunks
    torch.manual_seed(0)
    model = _TiedLM(CHUNK // 40 + 500, 40)
    ids = torch.randint(0, model.embed.num_embeddings, (3, 7))
    ids[0, 0] = model.embed.num_embeddings - 1  # a row in the second chunk
    items = list(enumerate(model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    d = Directions(5, kind)
    calls = []
    for cls, name in ((_fused.FusedWeight, "linear"), (_fused.FusedWeight, "embedding"),
                      (Directions, "perturbed_matrix")):
        orig = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, *a, _o=orig, _n=name: calls.append(_n) or _o(self, *a))
    for terms in ([(0, 1e-2)], [(0, 1e-2), (1, -3e-3)]):
        with torch.no_grad():
            with Perturbation(items, d, 4, terms, fused=False):
                whole = model(ids)
            with Perturbation(items, d, 4, terms):
                fused = model(ids)
        torch.testing.assert_close(fused, whole, rtol=1e-5, atol=1e-5)
    # the head in row blocks, the hidden layer (one block) as a perturbed matrix handed to the module
    assert calls.count("embedding") == 2 and calls.count("linear") == 2 and calls.count("perturbed_matrix") == 2, calls
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fused_path_is_skipped_where_it_does_not_apply():
    """Autograd on, or a module with its own hook: the plain whole-copy path."""
    from forwardonly.optim.perturb.fused import fusable

    lin = torch.nn.Linear(4, 3)
    d = Directions(0)
    assert not fusable(lin, lin.weight, d)  # grad mode is on here
    with torch.no_grad():
        assert fusable(lin, lin.weight, d)
        assert not fusable(lin, lin.bias, d)
        h = lin.register_forward_hook(lambda *a: None)
        assert not fusable(lin, lin.weight, d)
        h.remove()


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_ranges_gathers_and_update_equal_the_whole_direction(kind):
    d = Directions(7, kind)
    terms = [(0, 0.5), (1, -0.25)]
    for n in (13, CHUNK + 4321):
        p = torch.randn(n)
        full = d.perturbed(p, 2, terms, 4)
        for start, length in ((3, 5), (0, n), (CHUNK - 9, 30), (n // 3 + 1, n // 2)):
            if start >= n:
                continue
            length = min(length, n - start)
            dst = torch.empty(length)
            d.perturb_range(dst, p[start:start + length], 2, terms, 4, n, start)
            assert torch.equal(dst, full[start:start + length]), (n, start, length)
        idx = torch.sort(torch.randint(0, n, (300,), generator=torch.Generator().manual_seed(n))).values
        assert torch.equal(d.gather(p, 2, 1, 4, idx), d.full(p, 2, 1, 4)[idx])
        chunked = p.clone()  # the update: blockwise equals chunk by chunk, bit for bit
        for probe, coef in terms:
            for start, stop, z in d.chunks(chunked, 2, probe, 4):
                chunked[start:stop].add_(z, alpha=coef)
        d.add_(p, 2, terms, 4)
        assert torch.equal(p, chunked)
