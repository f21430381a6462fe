"""Generic tests driven by the table of optimizers (forwardonly.optim.OPTIMIZERS)."""

import copy
import math

import pytest
import torch

from forwardonly.optim import OPTIMIZERS, ZOSGD, ForwardGrad, ZOAdam, build_optimizer

NAMES = list(OPTIMIZERS)
LR = {name: row.test["lr"] for name, row in OPTIMIZERS.items()}
KW = {name: row.test.get("kwargs", {}) for name, row in OPTIMIZERS.items()}


def problem(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = torch.sin(x[:, :1]) + x[:, 1:2]
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(dtype)
    return model, x.to(dtype), y.to(dtype)


def closure_for(model, x, y):
    return lambda: torch.nn.functional.mse_loss(model(x), y)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_loss_goes_down(name):
    model, x, y = problem()
    opt = build_optimizer(name, model.parameters(), lr=LR[name], seed=1, **KW[name])
    closure = closure_for(model, x, y)
    start = float(closure().detach())
    for _ in range(OPTIMIZERS[name].test.get("steps", 300)):
        opt.step(closure)
    assert float(closure()) < 0.6 * start


@pytest.mark.parametrize("name", NAMES)
def test_fast_matches_reference(name):
    row = OPTIMIZERS[name]
    cls, ref, fixed = row.cls, row.reference, row.fixed
    model, x, y = problem()
    model_ref = copy.deepcopy(model)
    opt = cls(model.parameters(), lr=LR[name], seed=3, **fixed, **KW[name])
    opt_ref = ref(model_ref.parameters(), lr=LR[name], seed=3, **fixed, **KW[name])
    for _ in range(100):
        loss = opt.step(closure_for(model, x, y))
        loss_ref = opt_ref.step(closure_for(model_ref, x, y))
        assert float(loss) == pytest.approx(float(loss_ref), rel=1e-4, abs=1e-6)
    for p, r in zip(model.parameters(), model_ref.parameters()):
        torch.testing.assert_close(p, r, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_run_and_global_rng_untouched(name):
    runs = []
    for _ in range(2):
        model, x, y = problem()
        opt = build_optimizer(name, model.parameters(), lr=LR[name], seed=7, **KW[name])
        rng = torch.get_rng_state()
        for _ in range(20):
            opt.step(closure_for(model, x, y))
        assert torch.equal(rng, torch.get_rng_state()), "the global RNG must not be touched"
        runs.append(params_of(model))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    model, x, y = problem()
    opt = build_optimizer(name, model.parameters(), lr=LR[name], seed=8, **KW[name])
    for _ in range(20):
        opt.step(closure_for(model, x, y))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], params_of(model)))


@pytest.mark.parametrize("name", NAMES)
def test_resume_is_bitwise_identical(name, tmp_path):
    model, x, y = problem()
    opt = build_optimizer(name, model.parameters(), lr=LR[name], seed=5, **KW[name])
    for _ in range(20):
        opt.step(closure_for(model, x, y))
    straight = params_of(model)

    model, x, y = problem()
    opt = build_optimizer(name, model.parameters(), lr=LR[name], seed=5, **KW[name])
    for _ in range(9):
        opt.step(closure_for(model, x, y))
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path / "ck.pt")
    del model, opt
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    model, x, y = problem(seed=0)
    model.load_state_dict(ck["model"])
    opt = build_optimizer(name, model.parameters(), lr=LR[name], seed=5, **KW[name])
    opt.load_state_dict(ck["optim"])
    for _ in range(11):
        opt.step(closure_for(model, x, y))
    assert all(torch.equal(a, b) for a, b in zip(straight, params_of(model)))


def test_resume_rejects_other_seed():
    model, x, y = problem()
    opt = ZOSGD(model.parameters(), lr=1e-3, seed=1)
    opt.step(closure_for(model, x, y))
    other = ZOSGD(model.parameters(), lr=1e-3, seed=2)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["zo-sgd", "zo-sgd-mmt", "zo-adam", "zo-sgd-cons"])
def test_lr_zero_leaves_weights_bitwise_unchanged(name, dtype):
    model, x, y = problem(dtype=dtype)
    before = params_of(model)
    opt = build_optimizer(name, model.parameters(), lr=0.0, eps=1e-2, seed=0)
    closure = closure_for(model, x, y)
    steps = 1000 if name == "zo-sgd" else 200
    for _ in range(steps):
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(model)))


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_loss_skips_step(name):
    model, x, y = problem()
    opt = build_optimizer(name, model.parameters(), lr=LR[name], seed=0, **KW[name])
    opt.step(closure_for(model, x, y))
    before = params_of(model)
    bad = lambda: closure_for(model, x, y)() * float("nan")  # noqa: E731
    loss = opt.step(bad)
    assert math.isnan(float(loss))
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(model)))
    assert opt.state["zo"]["skipped"] == 1
    opt.step(closure_for(model, x, y))
    assert not all(torch.equal(a, b) for a, b in zip(before, params_of(model)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -1.0}, "Invalid learning rate: -1.0"),
        ({"eps": 0.0}, "Invalid eps"),
        ({"q": 0}, "Invalid number of probes q: 0"),
        ({"direction": "uniform"}, "Invalid direction: 'uniform'"),
        ({"accum_steps": 0}, "Invalid accum_steps: 0"),
        ({"clip": -1.0}, "Invalid clip: -1.0"),
        ({"weight_decay": -0.1}, "Invalid weight_decay value: -0.1"),
        ({"momentum": 1.5}, "Invalid momentum value: 1.5"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    model, _, _ = problem()
    with pytest.raises(ValueError, match=message):
        ZOSGD(model.parameters(), **{"lr": 1e-3, **kwargs})


def test_bad_adam_hyperparameters_raise():
    model, _, _ = problem()
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        ZOAdam(model.parameters(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Invalid second_moment: 'diag'"):
        ZOAdam(model.parameters(), second_moment="diag")


def test_step_needs_closure():
    model, _, _ = problem()
    with pytest.raises(ValueError, match="closure"):
        ZOSGD(model.parameters()).step()


def test_gradient_accumulation_matches_full_batch():
    model, x, y = problem()
    twin = copy.deepcopy(model)
    full = ZOSGD(model.parameters(), lr=2e-3, seed=4)
    acc = ZOSGD(twin.parameters(), lr=2e-3, seed=4, accum_steps=2)

    def micro(i):
        sl = slice(32 * i, 32 * (i + 1))
        return torch.nn.functional.mse_loss(twin(x[sl]), y[sl])

    for _ in range(10):
        l1 = full.step(closure_for(model, x, y))
        l2 = acc.step(micro)
        assert float(l1) == pytest.approx(float(l2), rel=1e-5)
    for p, r in zip(model.parameters(), twin.parameters()):
        # the projected gradient divides a loss difference by 2*eps, which amplifies summation-order rounding
        torch.testing.assert_close(p, r, rtol=1e-4, atol=1e-4)
    assert acc.state["zo"]["forwards"] == 2 * full.state["zo"]["forwards"]


def test_accumulation_needs_indexed_closure():
    model, x, y = problem()
    opt = ZOSGD(model.parameters(), lr=1e-3, accum_steps=2)
    with pytest.raises(ValueError, match="closure\\(i\\)"):
        opt.step(closure_for(model, x, y))


def test_clip_bounds_projected_gradient():
    model, x, y = problem()
    opt = ZOSGD(model.parameters(), lr=1e-3, clip=1e-3, seed=0)
    for _ in range(5):
        opt.step(closure_for(model, x, y))
        assert all(abs(g) <= 1e-3 for g in opt.state["zo"]["last_grads"])


def test_one_sided_and_probes_count_forwards():
    model, x, y = problem()
    opt = ZOSGD(model.parameters(), lr=1e-3, q=3, two_sided=False)
    opt.step(closure_for(model, x, y))
    assert opt.state["zo"]["forwards"] == 4
    opt = ZOSGD(model.parameters(), lr=1e-3, q=3)
    opt.step(closure_for(model, x, y))
    assert opt.state["zo"]["forwards"] == 6


def test_forward_grad_matches_autograd_directional_derivative():
    model, x, y = problem()
    opt = ForwardGrad(model.parameters(), lr=0.0, seed=2)
    loss, (g,) = opt.estimate(closure_for(model, x, y), step=0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    expect = sum(float((p.grad * opt.directions.full(p, 0, 0, i)).sum())
                 for i, p in enumerate(model.parameters()))
    assert g == pytest.approx(expect, rel=1e-5)


def test_forward_grad_rejects_parameters_outside_modules():
    w = torch.nn.Parameter(torch.ones(3))
    opt = ForwardGrad([w], lr=1e-3)
    with pytest.raises(ValueError, match="not used by any module"):
        opt.step(lambda: (w * w).sum())


# ---------------------------------------------------------------- low precision, HF and quantized models
def tiny_lm(dtype, quantized=False):
    from forwardonly.models.tiny import tiny_model

    model, _ = tiny_model("llama", seed=0)
    if quantized:
        from forwardonly.quant import quantize_model

        quantize_model(model, bits=4, group_size=16)
    model.to(dtype)
    ids = torch.randint(3, 1000, (4, 12), generator=torch.Generator().manual_seed(0))
    closure = lambda: model(input_ids=ids, labels=ids).loss
    return model, closure


def full_state(model):
    return [t.detach().clone() for t in (*model.parameters(), *model.buffers())]


@pytest.mark.parametrize("setup", ["plain", "mixed", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["zo-sgd", pytest.param("zo-adam", marks=pytest.mark.slow)])
def test_lr_zero_leaves_hf_tiny_model_bitwise_unchanged(name, dtype, setup):
    """The restore guarantee on a real architecture: 16-bit weights, fp32-compute mixed precision
    (bf16/fp16 storage), and int4 quantized layers whose scales and norms are perturbed."""
    from contextlib import nullcontext

    from forwardonly.quant.mixed import MixedPrecision

    model, closure = tiny_lm(dtype, quantized=setup == "int4")
    before = full_state(model)
    opt = build_optimizer(name, model.parameters(), lr=0.0, eps=1e-2, seed=0)
    with MixedPrecision(model) if setup == "mixed" else nullcontext():
        for _ in range(10):
            loss = opt.step(closure)
            assert math.isfinite(float(loss))
    assert opt.zo_state["skipped"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, full_state(model)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_update_is_computed_in_fp32_and_rounded_once(dtype):
    from forwardonly.optim import direction

    model, x, y = problem(dtype=dtype)
    before = params_of(model)
    lr, wd = 3e-3, 0.1
    opt = ZOSGD(model.parameters(), lr=lr, weight_decay=wd, q=3, seed=5, direction="gaussian")
    opt.step(closure_for(model, x, y))
    coeffs = [g / 3 for g in opt.zo_state["last_grads"]]
    for i, (w0, w1) in enumerate(zip(before, model.parameters())):
        upd = w0.float() * (1 - lr * wd)
        for k, c in enumerate(coeffs):
            upd.add_(direction(w0.shape, "gaussian", 5, 0, k, i, dtype=dtype).float(), alpha=-lr * c)
        assert torch.equal(w1.detach(), upd.to(dtype))
