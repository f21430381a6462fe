"""Paired evaluation (``paired=True``): the two perturbed forwards of a probe in one forward over a doubled batch.

The estimate must be the one of two separate forwards (up to the float summation order of a batch of
another size), the weights must follow the same trajectory, and whatever cannot be split must fail
loudly instead of mixing the halves.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forwardonly.optim import (
    ZOSGD,
    ForwardGrad,
    Unpairable,
    ZOAdam,
    ZOFOHybrid,
    ZOSGDSparse,
    pair_batch,
    pair_losses,
)


class Net(nn.Module):
    """Every path a pair can take: a fused embedding, fused linears with and without a bias, a norm
    (generic ops on its parameters), a custom parameter used after an op on parameters alone."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 24)
        self.gate = Gate(24)
        self.fc2 = nn.Linear(24, 5, bias=False)

    def forward(self, ids):
        return self.fc2(self.gate(F.gelu(self.fc1(self.norm(self.emb(ids))))))


class Gate(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(-0.5, 0.5, n))

    def forward(self, h):
        return h * (1.0 + self.scale.float()).sigmoid().to(h.dtype)  # ops on the parameter alone, then the batch


def _data(seed=0, batch=4, length=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (batch, length), generator=g), torch.randint(0, 5, (batch, length), generator=g)


def _closures(model, ids, y):
    def plain():
        return F.cross_entropy(model(ids).reshape(-1, 5), y.reshape(-1))

    def paired():
        ids2, y2 = pair_batch(ids, y)
        per = F.cross_entropy(model(ids2).reshape(-1, 5), y2.reshape(-1), reduction="none")
        return pair_losses(per.view(ids2.shape[0], -1).mean(1))
    return plain, paired


def _run(make, paired, steps=12, seed=0):
    torch.manual_seed(seed)
    model = Net()
    ids, y = _data()
    plain, pair = _closures(model, ids, y)
    opt = make(model.parameters(), paired)
    losses, grads = [], []
    for _ in range(steps):
        losses.append(float(opt.step(pair if paired else plain)))
        grads.append(opt.zo_state["last_grads"][0])
    if hasattr(opt, "flush"):
        opt.flush()
    return model, opt, losses, grads


OPTS = {
    "zosgd": lambda p, paired: ZOSGD(p, lr=5e-3, eps=1e-3, seed=1, paired=paired),
    "zosgd-q2-momentum": lambda p, paired: ZOSGD(p, lr=5e-3, eps=1e-3, q=2, momentum=0.9, seed=2, paired=paired),
    "zosgd-deferred": lambda p, paired: ZOSGD(p, lr=5e-3, eps=1e-3, seed=3, paired=paired, defer_update=True),
    "zoadam": lambda p, paired: ZOAdam(p, lr=1e-3, eps=1e-3, seed=4, paired=paired),
    "sparse": lambda p, paired: ZOSGDSparse(p, lr=5e-3, eps=1e-3, density=0.3, seed=5, paired=paired),
    "gaussian": lambda p, paired: ZOSGD(p, lr=5e-3, eps=1e-3, direction="gaussian", seed=6, paired=paired),
}


@pytest.mark.parametrize("name", list(OPTS))
def test_paired_follows_the_sequential_trajectory(name):
    m1, o1, l1, g1 = _run(OPTS[name], paired=False)
    m2, o2, l2, g2 = _run(OPTS[name], paired=True)
    # one batch of 8 rows instead of two of 4: the same values up to float summation order
    torch.testing.assert_close(torch.tensor(g2), torch.tensor(g1), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(torch.tensor(l2), torch.tensor(l1), rtol=1e-5, atol=1e-6)
    # |dg| ~ 2e-4 (fp32 losses differenced over 2 eps) times lr, 12 steps and momentum's 1/(1-0.9): <= 5e-5
    torch.manual_seed(0)
    init = Net().state_dict()
    moved = 0.0
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=5e-5, msg=k)
        moved = max(moved, float((a - init[k]).abs().max()))
    assert moved > 2e-3  # 40x the tolerance: the runs went somewhere, and went there together
    assert o1.zo_state["forwards"] == o2.zo_state["forwards"]  # a paired call counts as two forwards


def test_paired_losses_are_the_two_perturbed_losses():
    """Each half of the paired forward sees exactly one side: compare with separately perturbed forwards."""
    from forwardonly.optim import Perturbation
    from forwardonly.optim.perturb import Directions

    torch.manual_seed(0)
    model = Net()
    ids, y = _data()
    plain, pair = _closures(model, ids, y)
    items = list(enumerate(model.parameters()))
    d = Directions(7)
    with torch.no_grad():
        with Perturbation(items, d, 3, [(0, 1e-2)]):
            lp = float(plain())
        with Perturbation(items, d, 3, [(0, -1e-2)]):
            lm = float(plain())
        with Perturbation(items, d, 3, [(0, 1e-2)], slices=[[(0, 1e-2)], [(0, -1e-2)]]):
            a, b = pair().tolist()
    assert lp != lm
    assert a == pytest.approx(lp, rel=1e-6) and b == pytest.approx(lm, rel=1e-6)


def test_lr_zero_paired_leaves_weights_bitwise():
    torch.manual_seed(0)
    model = Net().to(torch.bfloat16)
    before = copy.deepcopy(model.state_dict())
    ids, y = _data()

    def pair():
        logits = model(pair_batch(ids)).float()
        per = F.cross_entropy(logits.reshape(-1, 5), pair_batch(y).reshape(-1), reduction="none")
        return pair_losses(per.view(8, -1).mean(1))
    opt = ZOSGD(model.parameters(), lr=0.0, seed=0, paired=True)
    for _ in range(20):
        opt.step(pair)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gemma3"])
def test_paired_hf_models_match_sequential(arch):
    """Hugging Face decoders: Llama/Gemma (RMSNorm), GPT-2 (Conv1D via addmm, LayerNorm), OPT (biased linears)."""
    from forwardonly.models import tiny_model

    model, _ = tiny_model(arch, seed=0)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 10), generator=g)

    def per_row(m, x):
        logits = m(input_ids=x).logits
        per = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1), reduction="none")
        return per.view(x.shape[0], -1).mean(1)

    results = []
    for paired in (False, True):
        m, _ = tiny_model(arch, seed=0)
        opt = ZOSGD(m.parameters(), lr=1e-2, eps=1e-3, seed=9, paired=paired)
        closure = ((lambda m=m: pair_losses(per_row(m, pair_batch(ids)))) if paired
                   else (lambda m=m: per_row(m, ids).mean()))
        grads = []
        with torch.no_grad():
            for _ in range(6):
                opt.step(closure)
                grads.append(opt.zo_state["last_grads"][0])
        results.append((grads, m.state_dict()))
    (g1, s1), (g2, s2) = results
    init = model.state_dict()
    assert max(float((s1[k] - init[k]).abs().max()) for k in s1) > 1e-3
    torch.testing.assert_close(torch.tensor(g2), torch.tensor(g1), rtol=2e-3, atol=2e-3)
    for k in s1:
        torch.testing.assert_close(s2[k], s1[k], rtol=0, atol=5e-5, msg=k)


def test_closure_must_return_two_losses():
    torch.manual_seed(0)
    model = Net()
    ids, y = _data()
    plain, _ = _closures(model, ids, y)
    opt = ZOSGD(model.parameters(), lr=1e-3, paired=True)
    with pytest.raises(ValueError, match=r"two halves' losses.*got \(\)"):
        opt.step(plain)


def test_odd_batch_is_refused():
    torch.manual_seed(0)
    model = Net()
    ids, y = _data(batch=3)
    plain, _ = _closures(model, ids, y)
    opt = ZOSGD(model.parameters(), lr=1e-3, paired=True)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(Unpairable, match="odd number"):
        opt.step(lambda: torch.stack([plain(), plain()]))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_value_of_parameters_alone_leaving_a_module_is_refused():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.w * 2.0  # no batch: the second half's value would be lost

    m = Leaky()
    x = torch.randn(2, 4)
    opt = ZOSGD(m.parameters(), lr=1e-3, paired=True)
    with pytest.raises(Unpairable, match=r"Leaky \(parameter 0\) returns a value"):
        opt.step(lambda: (x * m(pair_batch(x))).sum(-1).view(2, -1).mean(1))


def test_parameter_outside_any_module_is_refused():
    w = nn.Parameter(torch.ones(3))
    opt = ZOSGD([w], lr=1e-3, paired=True)
    with pytest.raises(Unpairable, match="not used by any module"):
        opt.step(lambda: torch.stack([(w ** 2).sum(), (w ** 2).sum()]))


@pytest.mark.parametrize("make,match", [
    (lambda p: ZOSGD(p, paired=True, two_sided=False), "two_sided=False"),
    (lambda p: ZOSGD(p, paired=True, conservative=True), "conservative"),
    (lambda p: ForwardGrad(p, paired=True), "ForwardGrad does not pair"),
])
def test_invalid_combinations(make, match):
    with pytest.raises(ValueError, match=match):
        make(Net().parameters())


def test_hybrid_does_not_pair():
    model = Net()
    groups = [{"params": list(model.fc1.parameters())}, {"params": list(model.fc2.parameters())}]
    with pytest.raises(ValueError, match="ZOFOHybrid does not pair"):
        ZOFOHybrid(groups, lr=1e-3, fo_blocks=1, paired=True)


def test_pair_losses_checks_its_input():
    with pytest.raises(ValueError, match=r"an even dim 0\), got shape \(3,\)"):
        pair_losses(torch.ones(3))
    assert pair_losses(torch.tensor([1.0, 3.0, 5.0, 7.0])).tolist() == [2.0, 6.0]
