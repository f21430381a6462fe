"""FZOO, HiZOO(-L), Sparse-MeZO and LOZO(-M): each one's own properties.

The generic contract (descent, reference twin, determinism, resume, non-finite skip) is tested for them
from the table in test_optimizers.py; these are what each method promises beyond it.
"""

import copy
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forwardonly.optim import FZOO, LOZO, ZOSGD, HiZOO, SparseMeZO, direction, pair_batch, pair_losses
from forwardonly.optim.perturb.masks import MagnitudeMask, magnitude_threshold


class Net(nn.Module):
    """Every path a direction takes: a fused embedding (gathered rows), fused linears, a norm and a bare
    parameter (whole perturbed copies)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 24)
        self.scale = nn.Parameter(torch.linspace(-0.5, 0.5, 24))
        self.fc2 = nn.Linear(24, 5, bias=False)

    def forward(self, ids):
        h = F.gelu(self.fc1(self.norm(self.emb(ids))))
        return self.fc2(h * (1.0 + self.scale).sigmoid())


def data(seed=0, batch=4, length=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (batch, length), generator=g), torch.randint(0, 5, (batch, length), generator=g)


def net(seed=0):
    torch.manual_seed(seed)
    return Net()


def loss_of(model, ids, y):
    return lambda: F.cross_entropy(model(ids).reshape(-1, 5), y.reshape(-1))


def paired_loss_of(model, ids, y):
    def closure():
        i2, y2 = pair_batch(ids, y)
        per_row = F.cross_entropy(model(i2).reshape(-1, 5), y2.reshape(-1), reduction="none")
        return pair_losses(per_row.view(i2.shape[0], -1).mean(1))
    return closure


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def train(make, steps=6, model=None, closure=loss_of):
    model = model or net()
    ids, y = data()
    opt = make(model.parameters())
    for _ in range(steps):
        opt.step(closure(model, ids, y))
    opt.flush()
    return model, opt


# ----------------------------------------------------------------------------- FZOO
def test_fzoo_step_is_the_paper_rule_with_sigma_the_std_of_the_probe_losses():
    model, ids, y = net(), *data()
    before = weights(model)
    opt = FZOO(model.parameters(), lr=1e-4, q=4, seed=2)
    closure = loss_of(model, ids, y)
    l0 = float(closure())
    losses = [opt.evaluate(closure, 0, [(k, opt.eps)]) for k in range(4)]
    opt.step(closure)
    sigma = statistics.stdev(losses)
    assert opt.zo_state["last_scalars"]["sigma"] == pytest.approx(sigma, rel=1e-6)
    for i, (w0, w1) in enumerate(zip(before, model.parameters())):
        step = sum((lk - l0) / opt.eps * opt.directions.full(w0, 0, k, i) for k, lk in enumerate(losses))
        torch.testing.assert_close(w1.detach(), w0 - 1e-4 / sigma * step / 4, rtol=0, atol=1e-6)
    assert opt.zo_state["forwards"] == 4 + 5  # the four evaluations above, then the step's q + 1


def test_fzoo_paired_evaluates_q_plus_one_slices_in_one_forward_with_the_same_losses():
    calls = []
    model, ids, y = net(), *data()
    twin, start = copy.deepcopy(model), weights(model)
    seq = FZOO(model.parameters(), lr=1e-4, q=3, seed=4, eps=1e-2)
    par = FZOO(twin.parameters(), lr=1e-4, q=3, seed=4, eps=1e-2, paired=True)
    inner = paired_loss_of(twin, ids, y)

    def counted():
        calls.append(1)
        return inner()

    for _ in range(5):
        a = seq.step(loss_of(model, ids, y))
        b = par.step(counted)
        assert float(b) == pytest.approx(float(a), rel=1e-5)
    assert len(calls) == 5 and par.zo_state["forwards"] == seq.zo_state["forwards"] == 5 * 4
    for p, q, p0 in zip(model.parameters(), twin.parameters(), start):
        # the step divides by a loss spread: float order of a 4x batch moves it by a few 1e-4 of the step
        moved = float((p - p0).abs().max())
        torch.testing.assert_close(q, p, rtol=0, atol=2e-3 * moved)


def test_fzoo_with_coinciding_probe_losses_moves_nothing():
    w = nn.Linear(3, 1)
    before = weights(w)
    opt = FZOO(w.parameters(), lr=1.0, q=3)
    opt.step(lambda: torch.tensor(2.0))  # the loss does not depend on the weights: sigma = 0
    assert opt.zo_state["last_scalars"]["sigma"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, w.parameters()))


def test_fzoo_replay_reads_the_logged_sigma_bitwise():
    model, opt = train(lambda ps: FZOO(ps, lr=1e-4, q=3, seed=1), steps=1)
    twin = net()
    log = (opt.zo_state["last_grads"], opt.zo_state["last_scalars"])
    replayer = FZOO(twin.parameters(), lr=1e-4, q=3, seed=1, eps=5e-2)  # another eps: sigma comes from the log
    replayer.replay_update(0, *log)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


# ----------------------------------------------------------------------------- Sparse-MeZO
@pytest.mark.parametrize("extra", [{}, {"q": 2, "refresh": 2}, {"momentum": 0.9}])
def test_sparse_mezo_paths_agree_bitwise(extra):
    """The mask is evaluated from the weights in every path: fused linear and embedding, whole copies, the
    native-free blockwise path and the plain chunk loop give the same weights, bit for bit."""
    runs = {impl: weights(train(lambda ps, impl=impl: SparseMeZO(ps, lr=1e-2, density=0.3, seed=3, impl=impl,
                                                                 **extra))[0]) for impl in ("auto", "torch", "plain")}
    for impl in ("torch", "plain"):
        assert all(torch.equal(a, b) for a, b in zip(runs["auto"], runs[impl])), impl


@pytest.mark.parametrize("refresh", [0, 2])
def test_sparse_mezo_deferred_update_is_bitwise_the_immediate_one(refresh):
    now = weights(train(lambda ps: SparseMeZO(ps, lr=1e-2, density=0.3, seed=3, refresh=refresh), steps=7)[0])
    later = weights(train(lambda ps: SparseMeZO(ps, lr=1e-2, density=0.3, seed=3, refresh=refresh,
                                                defer_update=True), steps=7)[0])
    assert all(torch.equal(a, b) for a, b in zip(now, later))


def test_sparse_mezo_moves_only_the_small_weights_below_each_tensors_threshold():
    model, ids, y = net(), *data()
    before = weights(model)
    opt = SparseMeZO(model.parameters(), lr=1e-2, density=0.25, seed=0)
    opt.step(loss_of(model, ids, y))
    for i, (w0, w1) in enumerate(zip(before, model.parameters())):
        h = opt.directions.mask.threshold(0, i)
        assert h == magnitude_threshold(w0, 0.25)
        small = w0.abs() <= h
        assert torch.equal(w1[~small], w0[~small])
        assert bool((w1[small] != w0[small]).all())  # Rademacher entries, |g| > 0: every kept entry moves
        assert small.float().mean() >= 0.25
        if w0.numel() > 100:  # random weights: no ties at the threshold (a norm's ones are all kept)
            assert small.float().mean() < 0.26


def test_sparse_mezo_with_density_one_is_zo_sgd_bitwise():
    a = weights(train(lambda ps: SparseMeZO(ps, lr=1e-2, density=1.0, seed=5))[0])
    b = weights(train(lambda ps: ZOSGD(ps, lr=1e-2, seed=5))[0])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_magnitude_mask_keeps_the_thresholds_of_the_step_before_for_a_deferred_update():
    m = MagnitudeMask(0.5)
    m.set_thresholds(0, {0: 1.0})
    m.set_thresholds(4, {0: 2.0})
    m.set_thresholds(8, {0: 3.0})
    assert [m.threshold(t, 0) for t in (4, 7, 8, 20)] == [2.0, 2.0, 3.0, 3.0]
    with pytest.raises(KeyError):
        m.threshold(3, 0)  # only the two newest are kept


# ----------------------------------------------------------------------------- LOZO
def test_lozo_directions_are_rank_r_with_a_subspace_kept_for_interval_steps():
    model = net()
    opt = LOZO(model.parameters(), rank=3, interval=4, seed=1)
    d, w = opt.directions, model.fc1.weight
    i = [n for n, _ in model.named_parameters()].index("fc1.weight")
    zs = [d.full(w, t, 0, i) for t in range(6)]
    assert all(int(torch.linalg.matrix_rank(z)) == 3 for z in zs)
    assert torch.equal(d.v(0, i), d.v(3, i)) and not torch.equal(d.v(3, i), d.v(4, i))
    assert not torch.equal(d.u(0, 0, i), d.u(1, 0, i))
    both = torch.cat([zs[0], zs[1]], dim=0)  # two steps in one subspace: their rows share V's span
    assert int(torch.linalg.matrix_rank(both)) == 3
    bias = d.full(model.fc1.bias, 0, 0, i + 1)  # not a matrix: elementwise
    assert bias.shape == (24,) and int((bias != 0).sum()) == 24


def test_lozo_update_of_a_matrix_is_lr_c_u_v_over_r():
    model, ids, y = net(), *data()
    before = weights(model)
    opt = LOZO(model.parameters(), lr=1e-2, rank=2, seed=3)
    opt.step(loss_of(model, ids, y))
    (g,) = opt.zo_state["last_grads"]
    for i, (w0, w1) in enumerate(zip(before, model.parameters())):
        z = opt.directions.full(w0, 0, 0, i)
        scale = 2 if w0.dim() == 2 else 1
        torch.testing.assert_close(w1.detach(), w0 - 1e-2 * g * z / scale, rtol=0, atol=1e-6)
        if w0.dim() == 2:
            assert int(torch.linalg.matrix_rank(w1.detach() - w0, atol=1e-6)) <= 2


@pytest.mark.parametrize("extra", [{}, {"momentum": 0.9, "interval": 2}, {"q": 2, "paired": True}])
def test_lozo_fused_paths_agree_with_whole_copies(extra):
    closure = paired_loss_of if extra.get("paired") else loss_of
    runs = {impl: weights(train(lambda ps, impl=impl: LOZO(ps, lr=1e-2, rank=2, seed=3, impl=impl, **extra),
                                closure=closure)[0]) for impl in ("auto", "plain")}
    for a, b in zip(runs["auto"], runs["plain"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_lozo_m_carries_its_factor_into_a_new_subspace():
    model, opt = train(lambda ps: LOZO(ps, lr=1e-2, rank=2, interval=2, momentum=0.9, seed=3), steps=3)
    st = opt.state[model.fc1.weight]
    assert st["lowrank_momentum"].shape == (24, 2) and st["epoch"] == 1
    assert "momentum_buffer" in opt.state[model.fc1.bias]


# ----------------------------------------------------------------------------- HiZOO
def test_hizoo_measures_the_directional_curvature_and_updates_the_diagonal():
    """L(w) = 1/2 sum a_i w_i^2: with Sigma = 1, h = (L+ + L- - 2 L0) / (2 eps^2) = 1/2 sum a_i z_i^2, and
    Sigma_i <- (1 - alpha) + alpha |h| z_i^2."""
    w = nn.Parameter(torch.tensor([0.3, -1.0, 2.0, 0.5]))
    a = torch.tensor([1.0, 4.0, 0.5, 2.0])
    opt = HiZOO([w], lr=1e-3, hessian_smooth=0.1, eps=1e-2, seed=0)
    opt.step(lambda: 0.5 * (a * w.detach().double() ** 2).sum().float())
    z = direction(w.shape, "gaussian", 0, 0, 0, 0)  # Sigma was 1 when it perturbed: the unscaled direction
    (h,) = opt.zo_state["last_scalars"]["curvature"]
    assert h == pytest.approx(float(0.5 * (a * z * z).sum()), rel=1e-3)
    sigma = opt.state[w]["hessian"]
    torch.testing.assert_close(sigma, 0.9 + 0.1 * abs(h) * z * z, rtol=1e-6, atol=0)


def test_hizoo_perturbs_along_z_over_sqrt_sigma_in_every_path():
    runs = {impl: weights(train(lambda ps, impl=impl: HiZOO(ps, lr=1e-3, hessian_smooth=1e-2, seed=1, impl=impl,
                                                            low_rank=True))[0]) for impl in ("auto", "plain")}
    assert all(torch.equal(a, b) for a, b in zip(runs["auto"], runs["plain"]))


def test_hizoo_l_keeps_rows_and_columns_only_for_matrices():
    model, opt = train(lambda ps: HiZOO(ps, lr=1e-3, hessian_smooth=1e-2, low_rank=True, seed=1))
    st = opt.state[model.fc1.weight]
    assert set(st) == {"hessian_row", "hessian_col"}
    assert st["hessian_row"].shape == (24,) and st["hessian_col"].shape == (16,)
    assert float(st["hessian_row"].sum()) == pytest.approx(float(st["hessian_col"].sum()), rel=1e-5)
    assert opt.state[model.fc1.bias]["hessian"].shape == (24,)
    full = sum(t.numel() for s in HiZOO(net().parameters()).state.values() for t in s.values()
               if isinstance(t, torch.Tensor))
    low = sum(t.numel() for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor))
    assert low < 0.2 * full


def test_hizoo_paired_runs_the_2q_plus_1_points_in_one_forward():
    calls = []
    model, ids, y = net(), *data()
    twin = copy.deepcopy(model)
    seq = HiZOO(model.parameters(), lr=1e-3, q=2, hessian_smooth=1e-2, seed=2)
    par = HiZOO(twin.parameters(), lr=1e-3, q=2, hessian_smooth=1e-2, seed=2, paired=True)
    inner = paired_loss_of(twin, ids, y)

    def counted():
        calls.append(1)
        return inner()

    for _ in range(4):
        seq.step(loss_of(model, ids, y))
        par.step(counted)
    assert len(calls) == 4 and par.zo_state["forwards"] == 4 * 5
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-5)
