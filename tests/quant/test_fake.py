"""Quantization-aware ZO: fake-quantized activations (W4A8/W8A8), shadow-weight layers, export to the integer layout."""

import pytest
import torch
from torch import nn

from forwardonly.optim import build_optimizer
from forwardonly.quant import (
    FakeQuantEmbedding,
    FakeQuantLinear,
    QuantConfig,
    QuantizationError,
    QuantLinear,
    dequantize,
    export_quantized,
    fake_quant_activations,
    fake_quant_weight,
    fake_quantize_model,
    load_quantized,
    quantize,
    quantize_model,
    scale_parameters,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny(arch="llama"):
    from forwardonly.models.tiny import tiny_model

    model, _ = tiny_model(arch)
    return model, torch.randint(3, 1000, (2, 9), generator=gen())


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("layout", [{}, {"symmetric": True}, {"float_min": True},
                                    {"float_min": True, "min_dtype": torch.float16}])
def test_fake_quant_weight_is_the_reference_quantizer_round_trip(bits, layout):
    w = torch.randn(12, 96, generator=gen()) * 0.05
    w[0, :32] = 0.0  # an all-zero group
    if layout.get("float_min"):
        q, s, _, lo = quantize(w, bits, 32, float_min=True, min_dtype=layout.get("min_dtype", torch.float32))
        ref = dequantize(q, s, None, bits, offsets=lo)
    else:
        ref = dequantize(*quantize(w, bits, 32, layout.get("symmetric", False)), bits)
    fq = fake_quant_weight(w, bits, 32, **layout)
    assert torch.allclose(fq, ref, rtol=0, atol=1e-7)
    assert fake_quant_weight(w.bfloat16(), bits, 32, **layout).dtype == torch.bfloat16


def test_fake_quant_activations_hand_values_and_half_step_bound():
    x = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [-2.0, 0.3, 0.1, 1.0]])
    out = fake_quant_activations(x, 8)
    # row 0: scale 1/127, 0.25 * 127 = 31.75 -> 32; -0.5 * 127 = -63.5 -> -64 (round half to even)
    assert torch.allclose(out[0], torch.tensor([127, -64, 32, 0]) / 127.0, rtol=0, atol=1e-7)
    assert torch.equal(out[1], x[1])  # an all-zero token stays zero
    assert torch.allclose(out[2], torch.tensor([-127, 19, 6, 64]) * (2 / 127), rtol=0, atol=1e-7)
    big = torch.randn(5, 7, 64, generator=gen()) * 3
    for bits in (4, 8):
        qmax = 2 ** (bits - 1) - 1
        step = big.abs().amax(-1, keepdim=True) / qmax
        err = (fake_quant_activations(big, bits) - big).abs()
        assert (err <= step / 2 + 1e-6).all()
        codes = fake_quant_activations(big, bits) / step
        assert torch.allclose(codes, codes.round(), atol=1e-4)  # on the grid
        assert codes.abs().max() <= qmax + 1e-4
    assert fake_quant_activations(big.bfloat16(), 8).dtype == torch.bfloat16


def test_per_token_scales_do_not_mix_sentences_and_per_tensor_scales_do():
    a = torch.randn(1, 5, 64, generator=gen(1))
    b = torch.randn(1, 5, 64, generator=gen(2)) * 10
    both = torch.cat([a, b])
    assert torch.equal(fake_quant_activations(both, 8, "token")[:1], fake_quant_activations(a, 8, "token"))
    assert not torch.equal(fake_quant_activations(both, 8, "tensor")[:1], fake_quant_activations(a, 8, "tensor"))


def test_w4a8_layer_output_error_is_bounded():
    """|y - x W^T| <= sum_j |x_j| ds_w/2 + sum_j |wq_j| ds_x/2 (each factor moves by at most half its step)."""
    lin = nn.Linear(128, 40)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 128, generator=gen()) * 0.05)
    x = torch.randn(3, 6, 128, generator=gen(1))
    exact = lin(x)
    w4 = QuantLinear.from_linear(lin, bits=4, group_size=32, log_scales=False)
    w4a8 = QuantLinear.from_linear(lin, bits=4, group_size=32, log_scales=False, act_bits=8)
    with torch.no_grad():
        y4, y = w4(x), w4a8(x)
        wq = w4.dequantized()
    w_step = w4.real_scales().detach().repeat_interleave(32, dim=1)  # (40, 128)
    x_step = x.abs().amax(-1, keepdim=True) / 127
    bound = x.abs() @ (w_step / 2).T + (x_step / 2) * wq.abs().sum(1)
    err = (y - exact).abs()
    assert (err <= bound * (1 + 1e-4) + 1e-5).all()
    assert 0 < (y - y4).abs().max() <= ((x_step / 2) * wq.abs().sum(1)).max()  # A8 adds error, within its part
    assert ((y - exact).norm() / exact.norm()).item() < 0.15
    with torch.no_grad():  # without act_bits the layer is what it was
        assert torch.equal(y4, torch.nn.functional.linear(x, wq, lin.bias))


@pytest.mark.parametrize("act", [None, 8])
def test_fake_quant_linear_equals_the_integer_layer_and_never_writes_its_weight(act):
    lin = nn.Linear(64, 24)
    cfg = QuantConfig(bits=4, group_size=32, activations=act)
    fake = FakeQuantLinear.from_linear(lin, cfg)
    assert fake.weight is lin.weight
    before = lin.weight.detach().clone()
    real = QuantLinear.from_linear(lin, bits=4, group_size=32, act_bits=act)
    x = torch.randn(4, 64, generator=gen())
    with torch.no_grad():
        assert torch.allclose(fake(x), real(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(lin.weight, before)


def test_fake_quantize_model_keeps_ties_and_matches_the_quantized_model():
    """Same grid, same outputs: with linear scales bit for bit (a log-scale's exp(log s) is an ulp off s, which with
    quantized activations can flip an activation code downstream: ~3e-3 on these logits)."""
    model, ids = tiny()
    ref, _ = tiny()
    cfg = QuantConfig(bits=4, group_size=16, activations=8, log_scales=False)
    fake_quantize_model(model, cfg)
    quantize_model(ref, cfg)
    assert isinstance(model.model.embed_tokens, FakeQuantEmbedding) and isinstance(model.lm_head, FakeQuantLinear)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert isinstance(ref.model.layers[0].mlp.down_proj, QuantLinear)
    assert ref.model.layers[0].mlp.down_proj.act_bits == 8
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_zo_on_shadow_weights_lowers_the_loss_and_keeps_them_full_precision():
    g = gen(3)
    x = torch.randn(128, 32, generator=g)
    teacher = nn.Linear(32, 4)
    y = teacher(x).detach()
    student = nn.Sequential(nn.Linear(32, 4))
    fake_quantize_model(student, QuantConfig(bits=8, group_size=16, activations=8))
    params = list(student.parameters())
    opt = build_optimizer("zo-sgd", params, lr=2e-2, eps=1e-2, seed=0, q=4)
    closure = lambda: nn.functional.mse_loss(student(x), y)
    start = float(closure())
    for _ in range(150):
        opt.step(closure)
    assert float(closure()) < 0.5 * start
    w = student[0].weight.detach()
    assert not torch.equal(w, fake_quant_weight(w, 8, 16))  # the shadow weight is off the grid


@pytest.mark.parametrize("shadow", [True, False])
def test_export_round_trip_gives_the_same_outputs(tmp_path, shadow):
    """Shadow weights (ZeroQAT) or trained scales (QZO), W4A8: the exported integer file loads back into a fresh
    model whose logits equal the trained model's, bit for bit."""
    model, ids = tiny()
    cfg = QuantConfig(bits=4, group_size=16, activations=8, shadow=shadow,
                      embedding={"bits": 8, "symmetric": True})
    if shadow:
        fake_quantize_model(model, cfg)
        params = [p for p in model.parameters()]
    else:
        quantize_model(model, cfg)
        for p in model.parameters():
            p.requires_grad_(False)
        params = scale_parameters(model)
    opt = build_optimizer("zo-sgd", params, lr=1e-3, eps=1e-3, seed=0)
    closure = lambda: model(input_ids=ids, labels=ids).loss
    for _ in range(3):
        opt.step(closure)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    export_quantized(model, tmp_path / "q.safetensors")
    with torch.no_grad():  # the trained model is unchanged by its export
        assert torch.equal(model(input_ids=ids).logits, ref)
    assert isinstance(model.lm_head, FakeQuantLinear if shadow else QuantLinear)
    fresh, _ = tiny()
    load_quantized(fresh, tmp_path / "q.safetensors")
    assert fresh.model.layers[0].self_attn.q_proj.act_bits == 8 and fresh.lm_head.act_bits == 8
    assert not fresh.quant_config.shadow
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, ref)


@pytest.mark.parametrize("kwargs, match", [
    ({"activations": 6}, r"activations=6 is not supported \(choose from \(4, 8\)"),
    ({"activations": True}, r"activations=True is not supported"),
    ({"activation_scope": "channel", "activations": 8}, r"activation_scope='channel' is not one of"),
    ({"bits": 3}, r"bits=3 is not supported"),
    ({"embedding": {"activations": 2}}, r"activations=2 is not supported"),
])
def test_bad_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(QuantizationError, match=match) as e:
        QuantConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_group_size_not_dividing_fails_before_anything_changes():
    model, ids = tiny()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    with pytest.raises(QuantizationError, match=r"in_features=\d+ is not divisible by group_size=24") as e:
        fake_quantize_model(model, QuantConfig(bits=4, group_size=24, shadow=True))
    assert "\n" not in str(e.value)
    assert not any(isinstance(m, (FakeQuantLinear, FakeQuantEmbedding)) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
    for bad, match in [((3, 64, 7, 32), r"bits=7 is not supported"), ((3, 48, 4, 32), r"=48 is not divisible by group_size=32")]:
        rows, cols, bits, group = bad
        with pytest.raises(ValueError, match=match):
            fake_quant_weight(torch.zeros(rows, cols), bits, group)
    with pytest.raises(ValueError, match=r"activations=5 is not supported"):
        fake_quant_activations(torch.zeros(2, 4), 5)
    with pytest.raises(ValueError, match=r"activations=5 is not supported"):
        QuantLinear(64, 8, act_bits=5)
