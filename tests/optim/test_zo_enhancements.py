"""Block-wise ZO, sparse perturbations and hybrid ZO/FO: what each may and may not change.

The generic contract (descent, reference twin, determinism, resume, non-finite skip) is
tested for them from the table in test_optimizers.py; these are their own properties.
"""

import copy

import pytest
import torch

from forwardonly.optim import (
    ZOSGD,
    ZOFOHybrid,
    ZOFOHybridReference,
    ZOSGDBlock,
    ZOSGDSparse,
    ZOSGDSparseReference,
)
from forwardonly.blocks import block_groups, block_key
from forwardonly.optim.zosgd_sparse import mask

F = torch.nn.functional


def problem(seed=0, width=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = torch.sin(x[:, :1]) + x[:, 1:2]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                                torch.nn.Tanh(), torch.nn.Linear(width, 1))
    return model, x, y


def loss_of(model, x, y):
    return lambda: F.mse_loss(model(x), y)


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def named_like_a_decoder(model):
    """The Sequential's parameters under decoder-style names: embed, layers.0, layers.1 (bias), head."""
    names = ["model.embed_tokens.weight", "model.embed_tokens.bias", "model.layers.0.mlp.weight",
             "model.layers.0.mlp.bias", "lm_head.weight", "lm_head.bias"]
    return list(zip(names, model.parameters()))


# ----------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("name, block", [
    ("model.layers.11.self_attn.q_proj.weight", "layers.11"),
    ("base_model.model.model.layers.3.mlp.up_proj.lora_A.default.weight", "layers.3"),
    ("transformer.h.0.attn.c_attn.weight", "h.0"),
    ("model.embed_tokens.weight", "model.embed_tokens"),
    ("model.norm.weight", "model.norm"),
    ("lm_head.weight", "lm_head"),
    ("score.weight", "score"),
    ("bare", "bare"),
])
def test_block_of_a_parameter_name(name, block):
    assert block_key(name) == block


def test_blocks_from_names_groups_and_tensors():
    model, _, _ = problem()
    ps = list(model.parameters())
    groups = block_groups(named_like_a_decoder(model))
    assert [g["block"] for g in groups] == ["model.embed_tokens", "layers.0", "lm_head"]
    assert [len(g["params"]) for g in groups] == [2, 2, 2]
    assert [g["block"] for g in block_groups(ps)] == [f"param.{k}" for k in range(6)]
    two = block_groups([{"params": ps[:2], "lr": 0.5}, {"params": ps[2:]}])
    assert [len(g["params"]) for g in two] == [2, 4] and two[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="not a mix"):
        block_groups([ps[0], ("a", ps[1])])
    with pytest.raises(ValueError, match="empty"):
        block_groups([])


def test_block_step_changes_only_its_block_and_cycles():
    model, x, y = problem()
    opt = ZOSGDBlock(named_like_a_decoder(model), lr=1e-2, seed=0)
    assert opt.blocks == ["model.embed_tokens", "layers.0", "lm_head"]
    members = [[0, 1], [2, 3], [4, 5]]
    for t in range(6):
        before = snapshot(model)
        opt.step(loss_of(model, x, y))
        after = snapshot(model)
        changed = [k for k, (a, b) in enumerate(zip(before, after)) if not torch.equal(a, b)]
        assert changed == members[t % 3], (t, changed)
    assert opt.state["zo"]["forwards"] == 12


def test_block_with_a_single_block_is_zo_sgd_bitwise():
    model, x, y = problem()
    twin = copy.deepcopy(model)
    one = ZOSGDBlock([(f"layers.0.p{k}", p) for k, p in enumerate(model.parameters())], lr=1e-2, seed=4,
                     momentum=0.9)
    plain = ZOSGD(twin.parameters(), lr=1e-2, seed=4, momentum=0.9)
    for _ in range(10):
        assert torch.equal(one.step(loss_of(model, x, y)), plain.step(loss_of(twin, x, y)))
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), snapshot(twin)))


def test_block_update_replays_from_the_step_alone():
    # the seed-log replay calls _apply(step, coeffs) with no active block: it must pick the step's block
    model, x, y = problem()
    start = copy.deepcopy(model)
    opt = ZOSGDBlock(named_like_a_decoder(model), lr=1e-2, seed=2)
    log = []
    for t in range(5):
        opt.step(loss_of(model, x, y))
        log.append((t, list(opt.state["zo"]["last_grads"])))
    replay = ZOSGDBlock(named_like_a_decoder(start), lr=1e-2, seed=2)
    for t, grads in log:
        replay._apply(t, grads)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), snapshot(start)))


# ----------------------------------------------------------------------------- sparse
def test_sparse_changes_only_masked_entries_with_the_density_asked():
    model, x, y = problem(width=64)
    opt = ZOSGDSparse(model.parameters(), lr=1e-2, density=0.25, seed=3)
    for t in range(3):
        before = snapshot(model)
        opt.step(loss_of(model, x, y))
        kept = total = 0
        for i, (a, b) in enumerate(zip(before, snapshot(model))):
            m = mask(a.shape, 3, t, i, 0.25)
            assert torch.equal(a[~m], b[~m]), "an entry outside the mask moved"
            assert bool((a[m] != b[m]).all()), "every masked entry moves (Rademacher, |g| > 0)"
            kept, total = kept + int(m.sum()), total + m.numel()
        assert kept / total == pytest.approx(0.25, abs=0.02)  # 4,800 entries: 4 sigma ~ 0.025


def test_sparse_mask_is_a_function_of_seed_step_and_parameter():
    a = mask((300, 7), 1, 5, 2, 0.3)
    assert torch.equal(a, mask((300, 7), 1, 5, 2, 0.3))
    for other in (mask((300, 7), 2, 5, 2, 0.3), mask((300, 7), 1, 6, 2, 0.3), mask((300, 7), 1, 5, 3, 0.3)):
        assert not torch.equal(a, other)


def test_sparse_with_density_one_is_zo_sgd_bitwise():
    model, x, y = problem()
    twin = copy.deepcopy(model)
    sparse = ZOSGDSparse(model.parameters(), lr=1e-2, density=1.0, seed=4)
    plain = ZOSGD(twin.parameters(), lr=1e-2, seed=4)  # both fuse their linear layers: the same matmuls
    for _ in range(10):
        assert torch.equal(sparse.step(loss_of(model, x, y)), plain.step(loss_of(twin, x, y)))
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), snapshot(twin)))


def test_sparse_momentum_and_probes_match_the_reference():
    # q=2 with momentum goes through accumulate(): the mask must reach it too
    model, x, y = problem()
    twin = copy.deepcopy(model)
    fast = ZOSGDSparse(model.parameters(), lr=5e-3, density=0.3, q=2, momentum=0.9, seed=6)
    ref = ZOSGDSparseReference(twin.parameters(), lr=5e-3, density=0.3, q=2, momentum=0.9, seed=6)
    for _ in range(20):
        assert float(fast.step(loss_of(model, x, y))) == pytest.approx(float(ref.step(loss_of(twin, x, y))),
                                                                       rel=1e-5, abs=1e-7)
    for a, b in zip(snapshot(model), snapshot(twin)):  # ZO-SGD vs its reference drifts as much (in-place restore)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # an unmasked direction in accumulate() would move 70 % more entries: the sign step shows it directly
    opt = ZOSGDSparse(model.parameters(), lr=1e-3, density=0.3, q=2, sign=True, seed=6)
    before = snapshot(model)
    opt.step(loss_of(model, x, y))
    for i, (a, b) in enumerate(zip(before, snapshot(model))):
        assert torch.equal(a[~mask(a.shape, 6, 0, i, 0.3)], b[~mask(a.shape, 6, 0, i, 0.3)])


def test_sparse_resume_rejects_another_density():
    model, x, y = problem()
    opt = ZOSGDSparse(model.parameters(), lr=1e-2, density=0.2)
    opt.step(loss_of(model, x, y))
    with pytest.raises(ValueError, match="density=0.2"):
        ZOSGDSparse(model.parameters(), lr=1e-2, density=0.5).load_state_dict(opt.state_dict())


# ----------------------------------------------------------------------------- hybrid
def test_hybrid_first_order_part_is_adamw_on_the_true_gradient_and_zo_part_is_frozen_for_autograd():
    model, x, y = problem()
    twin = copy.deepcopy(model)
    opt = ZOFOHybrid(named_like_a_decoder(model), lr=0.0, fo_lr=1e-2, fo_blocks=1, seed=0)
    assert opt.fo_blocks == ["lm_head"]
    adam = torch.optim.AdamW(list(twin.parameters())[4:], lr=1e-2, weight_decay=0.0)
    for p in list(twin.parameters())[:4]:
        p.requires_grad_(False)
    before = snapshot(model)
    for _ in range(5):
        opt.step(loss_of(model, x, y))
        adam.zero_grad()
        loss_of(twin, x, y)().backward()
        adam.step()
        assert all(p.grad is None for p in model.parameters()), "no gradient is left behind, none on the ZO part"
    after = snapshot(model)
    assert all(torch.equal(a, b) for a, b in zip(before[:4], after[:4])), "ZO part at lr=0 must not move"
    for a, b in zip(after[4:], list(twin.parameters())[4:]):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    zs = opt.state["zo"]
    assert zs["forwards"] == 5 * 3 and zs["backwards"] == 5  # two-sided: 2 ZO forwards + 1 with backward


def test_hybrid_backward_stops_at_the_first_order_part():
    model, x, y = problem()
    opt = ZOFOHybrid(named_like_a_decoder(model), lr=1e-3, fo_blocks=1)
    seen = []
    model[0].register_full_backward_hook(lambda *a: seen.append("embed"))
    model[4].register_full_backward_hook(lambda *a: seen.append("head"))
    opt.step(loss_of(model, x, y))
    assert seen == ["head"]


@pytest.mark.parametrize("fo_optim", ["sgd", "adam"])
def test_hybrid_one_sided_matches_the_reference_and_costs_q_plus_one_forwards(fo_optim):
    model, x, y = problem()
    twin = copy.deepcopy(model)
    kw = {"lr": 5e-3, "fo_lr": 1e-2, "fo_blocks": 2, "fo_optim": fo_optim, "two_sided": False, "q": 2,
          "momentum": 0.5, "seed": 1}
    fast = ZOFOHybrid(named_like_a_decoder(model), **kw)
    ref = ZOFOHybridReference(named_like_a_decoder(twin), **kw)
    for _ in range(15):
        assert float(fast.step(loss_of(model, x, y))) == pytest.approx(float(ref.step(loss_of(twin, x, y))),
                                                                       rel=1e-5, abs=1e-7)
    for a, b in zip(snapshot(model), snapshot(twin)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)  # the reference's in-place restore drifts
    assert fast.state["zo"]["forwards"] == 15 * 3


def test_hybrid_needs_a_loss_tensor_with_autograd():
    model, x, y = problem()
    opt = ZOFOHybrid(named_like_a_decoder(model), lr=1e-3)
    with pytest.raises(ValueError, match="does not depend on the first-order"):
        opt.step(lambda: float(loss_of(model, x, y)()))


# ----------------------------------------------------------------------------- bad hyperparameters
@pytest.mark.parametrize("cls, kwargs, message", [
    (ZOSGDSparse, {"density": 0.0}, "Invalid density .*: 0.0"),
    (ZOSGDSparse, {"density": 1.5}, "Invalid density .*: 1.5"),
    (ZOSGDBlock, {"lr": -1.0}, "Invalid learning rate: -1.0"),
    (ZOFOHybrid, {"fo_blocks": 0}, "Invalid fo_blocks: 0"),
    (ZOFOHybrid, {"fo_blocks": 3}, "Invalid fo_blocks: 3 .*3 blocks"),
    (ZOFOHybrid, {"fo_lr": -1.0}, "Invalid fo_lr .*: -1.0"),
    (ZOFOHybrid, {"fo_optim": "rmsprop"}, "Invalid fo_optim: 'rmsprop'"),
    (ZOFOHybrid, {"conservative": True}, "no conservative variant"),
    (ZOFOHybrid, {"betas": (0.9, 1.0)}, "Invalid beta parameter at index 1: 1.0"),
])
def test_bad_hyperparameters_raise(cls, kwargs, message):
    model, _, _ = problem()
    with pytest.raises(ValueError, match=message):
        cls(named_like_a_decoder(model), **{"lr": 1e-3, **kwargs})
