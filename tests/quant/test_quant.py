"""Quantized layers, model quantization, save/load, and ZO on quantized scales (QZO)."""

import pytest
import torch
from torch import nn

from forwardonly.optim import build_optimizer
from forwardonly.quant import (
    QuantConfig,
    QuantEmbedding,
    QuantizationError,
    QuantLinear,
    dequantize,
    load_quantized,
    offset_parameters,
    pack_int4,
    quantize,
    quantize_model,
    save_quantized,
    scale_parameters,
    unpack_int4,
)


def weight(rows=24, cols=128, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


def test_int4_packing_round_trips():
    codes = torch.randint(0, 16, (5, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (5, 6) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), codes)
    assert int(packed[0, 0]) == int(codes[0, 0]) | (int(codes[0, 1]) << 4)


@pytest.mark.parametrize("bits,symmetric,rel_err", [(8, False, 0.006), (8, True, 0.012), (4, False, 0.10),
                                                    (4, True, 0.20)])
def test_dequantize_error_is_within_half_a_step(bits, symmetric, rel_err):
    w = weight()
    q, s, z = quantize(w, bits, 32, symmetric)
    back = dequantize(q, s, z, bits)
    step = s.repeat_interleave(32, dim=1)
    assert ((w - back).abs() <= step / 2 * (1 + 1e-5) + 1e-7).all()
    assert ((w - back).norm() / w.norm()).item() < rel_err
    assert back.dtype == torch.float32
    assert dequantize(q, s, z, bits, torch.bfloat16).dtype == torch.bfloat16


def test_zero_weights_stay_exactly_zero():
    w = weight()
    w[:, :32] = 0.0
    w[3, 40] = 0.0
    back = dequantize(*quantize(w, 4, 32), 4)
    assert (back[:, :32] == 0).all() and back[3, 40] == 0


@pytest.mark.parametrize("bits", [4, 8])
def test_quant_linear_is_linear_with_the_dequantized_weight(bits):
    lin = nn.Linear(64, 40)
    with torch.no_grad():
        lin.weight.copy_(weight(40, 64))
    q = QuantLinear.from_linear(lin, bits=bits, group_size=16, chunk_rows=7)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))
    expected = nn.functional.linear(x, q.dequantized(), lin.bias)
    torch.testing.assert_close(q(x), expected, rtol=1e-5, atol=1e-6)
    assert q(x.bfloat16()).dtype == torch.bfloat16
    assert [n for n, _ in q.named_parameters()] == ["scales", "bias"]
    assert {n for n, _ in q.named_buffers()} == {"qweight", "zeros"}


def test_log_and_linear_scales_give_the_same_layer():
    lin = nn.Linear(64, 8)
    a = QuantLinear.from_linear(lin, bits=4, group_size=32, log_scales=True)
    b = QuantLinear.from_linear(lin, bits=4, group_size=32, log_scales=False)
    torch.testing.assert_close(a.real_scales(), b.scales.detach(), rtol=1e-6, atol=0)
    assert torch.equal(a.qweight, b.qweight)


def test_quant_embedding_looks_up_dequantized_rows():
    emb = nn.Embedding(50, 64)
    q = QuantEmbedding.from_embedding(emb, bits=4, group_size=32)
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    assert torch.equal(q(ids), q.dequantized()[ids])
    assert (q(ids) - emb(ids)).abs().max() < 0.5 * emb.weight.abs().max()


def tiny(arch="llama"):
    from forwardonly.models.tiny import tiny_model

    model, _ = tiny_model(arch)
    ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    return model, ids


def test_quantize_model_ties_embedding_and_head_and_stays_close():
    model, ids = tiny()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    quantize_model(model, bits=8, group_size=16)
    emb, head = model.model.embed_tokens, model.lm_head
    assert isinstance(emb, QuantEmbedding) and isinstance(head, QuantLinear)
    assert head.scales is emb.scales and head.qweight is emb.qweight
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert len(scale_parameters(model)) == 1 + 2 * 7  # tied table once, 7 linears per layer
    with torch.no_grad():
        out = model(input_ids=ids).logits
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()


def test_embeddings_false_keeps_the_tied_pair_in_floating_point():
    model, _ = tiny()
    quantize_model(model, bits=4, group_size=16, embeddings=False)
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=4, group_size=24), r"model\.layers\.0\.self_attn\.q_proj \(Linear 32->32\), [^;]* and 9 more layers: in_features=32 is not divisible by group_size=24"),
    (dict(bits=3, group_size=16), "bits=3"),
    (dict(bits=4, group_size=16, skip=("lm_head",)), "lm_head.*skip both or neither"),
])
def test_bad_settings_fail_before_anything_changes(kwargs, match):
    model, _ = tiny()
    before = state(model)
    modules = [type(m) for m in model.modules()]
    with pytest.raises(QuantizationError, match=match):
        quantize_model(model, **kwargs)
    assert [type(m) for m in model.modules()] == modules
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_skip_pattern_leaves_layers_in_floating_point():
    model, _ = tiny()
    quantize_model(model, bits=4, group_size=16, skip=("*.mlp.*",))
    assert type(model.model.layers[0].mlp.up_proj) is nn.Linear
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantLinear)


def test_save_and_load_round_trip(tmp_path):
    model, ids = tiny()
    quantize_model(model, bits=4, group_size=16)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.scales.add_(0.01)  # trained scales must survive
        ref = model(input_ids=ids).logits
    save_quantized(model, tmp_path / "q.safetensors")
    fresh, _ = tiny()
    load_quantized(fresh, tmp_path / "q.safetensors")
    assert fresh.lm_head.scales is fresh.model.embed_tokens.scales
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, ref)
    other, _ = tiny("qwen2")
    other.model.layers = other.model.layers[:1]
    with pytest.raises(Exception, match="does not match"):
        load_quantized(other, tmp_path / "q.safetensors")


def regression(bits, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 32, generator=g)
    teacher = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    student = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)
            # the student starts as a scaled copy: only the scales need to move
            s.copy_(t * (0.6 if t.dim() == 2 else 1.0))
        y = teacher(x)
    quantize_model(student, bits=bits, group_size=16)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in scale_parameters(student):
        p.requires_grad_(True)
    student.to(dtype)
    return student, x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("bits", [4, pytest.param(8, marks=pytest.mark.slow)])
def test_zo_on_scales_lowers_the_loss(bits):
    model, x, y = regression(bits)
    opt = build_optimizer("zo-sgd", scale_parameters(model), lr=2e-2, eps=1e-3, seed=0, clip=50.0)
    closure = lambda: nn.functional.mse_loss(model(x), y)
    start = float(closure().detach())
    for _ in range(150):
        opt.step(closure)
    assert float(closure()) < 0.5 * start


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["zo-sgd", *(pytest.param(n, marks=pytest.mark.slow)
                                               for n in ("zo-sgd-mmt", "zo-adam", "zo-sgd-cons"))])
def test_lr_zero_leaves_scales_bitwise_unchanged(name, dtype):
    model, x, y = regression(4, dtype)
    params = scale_parameters(model)
    assert all(p.dtype == dtype for p in params)
    before = [p.detach().clone() for p in params] + [b.clone() for b in model.buffers()]
    opt = build_optimizer(name, params, lr=0.0, eps=1e-2, seed=0)
    closure = lambda: nn.functional.mse_loss(model(x), y)
    for _ in range(60 if name == "zo-sgd" else 40):
        opt.step(closure)
    after = [p.detach() for p in params] + list(model.buffers())
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_scales_are_perturbed_inside_the_forward_not_written():
    from forwardonly.optim import Directions, Perturbation

    model, x, y = regression(4)
    params = scale_parameters(model)
    before = [p.detach().clone() for p in params]
    base = nn.functional.mse_loss(model(x), y)
    items = list(enumerate(params))
    with Perturbation(items, Directions(0), 0, [(0, 1e-2)]) as pert:
        moved = nn.functional.mse_loss(model(x), y)
        assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert pert.touched == {0, 1}
    assert float(moved) != float(base)
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_paired_zo_on_scales_is_refused_clearly():
    """The quantized layers scale their dequantized weight in place, which a paired forward cannot split:
    a paired QZO step must stop with an error naming the layer, before any scale moves."""
    from forwardonly.optim import Unpairable, pair_losses

    model, x, y = regression(4)
    opt = build_optimizer("zo-sgd", scale_parameters(model), lr=2e-2, eps=1e-3, seed=0, paired=True)
    before = [p.detach().clone() for p in scale_parameters(model)]
    closure = lambda: pair_losses(
        nn.functional.mse_loss(model(torch.cat([x, x])), torch.cat([y, y]), reduction="none").mean(-1))
    with pytest.raises(Unpairable, match=r"QuantLinear \(parameter \d+\), mul_ writes in place"):
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(before, scale_parameters(model)))


def test_group_offsets_start_at_zero_shift_whole_groups_and_stay_tied(tmp_path):
    model, ids = tiny()
    with torch.no_grad():
        ref = quantize_model(tiny()[0], bits=4, group_size=16)(input_ids=ids).logits
    quantize_model(model, bits=4, group_size=16, offsets=True)
    emb, head = model.model.embed_tokens, model.lm_head
    assert head.offsets is emb.offsets and emb.offsets.requires_grad
    offsets = offset_parameters(model)
    assert len(offsets) == len(scale_parameters(model)) == 1 + 2 * 7
    assert all(o.shape == s.shape and o.dtype == torch.float32 for o, s in zip(offsets, scale_parameters(model)))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)  # zero offsets: the quantized model exactly
        layer = model.model.layers[0].mlp.up_proj
        w0 = layer.dequantized()
        layer.offsets[2, 1] = 0.25
        w1 = layer.dequantized()
        diff = w1 - w0
        assert torch.allclose(diff[2, 16:32], torch.full((16,), 0.25))  # the whole group, nothing else
        diff[2, 16:32] = 0
        assert not diff.any()
        before = emb(torch.tensor([5]))[0]
        emb.offsets[5, 0] = -0.5
        after = emb(torch.tensor([5]))[0]
        assert torch.allclose(after[:16] - before[:16], torch.full((16,), -0.5))
        assert torch.equal(after[16:], before[16:])
        ref2 = model(input_ids=ids).logits
    assert "offsets=True" in repr(layer)
    save_quantized(model, tmp_path / "q.safetensors")
    fresh, _ = tiny()
    load_quantized(fresh, tmp_path / "q.safetensors")
    assert fresh.lm_head.offsets is fresh.model.embed_tokens.offsets
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, ref2)


def test_zo_on_offsets_alone_lowers_the_loss_and_leaves_codes_and_scales():
    torch.manual_seed(0)
    teacher = nn.Linear(64, 8)
    x = torch.randn(256, 64) + 1.0
    y = teacher(x).detach() + 0.3  # a shift the offsets reach through the inputs' mean (a scale cannot)
    layer = QuantLinear.from_linear(teacher, bits=4, group_size=16, offsets=True)
    layer.bias.requires_grad_(False)
    layer.scales.requires_grad_(False)
    codes, scales = layer.qweight.clone(), layer.scales.detach().clone()
    opt = build_optimizer("zo-sgd", [layer.offsets], lr=1e-4, eps=1e-3, seed=0)
    losses = [float(opt.step(lambda: (layer(x) - y).square().mean())) for _ in range(300)]
    assert losses[-1] < 0.1 * losses[0]  # measured: 0.095 -> 0.004
    assert torch.equal(layer.qweight, codes) and torch.equal(layer.scales.detach(), scales)


def test_float_min_layout_reproduces_q4_1_weights_exactly():
    """Weights dequantized from llama.cpp's Q4_1 (fp16 scale d and minimum m per group of 32) come back."""
    g = torch.Generator().manual_seed(0)
    rows, cols = 12, 96
    d = (torch.rand(rows, cols // 32, 1, generator=g) * 0.02 + 1e-3).half().float()
    m = (-torch.rand(rows, cols // 32, 1, generator=g) * 0.1).half().float()
    q = torch.randint(0, 16, (rows, cols // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # Q4_1 puts each group's minimum on code 0 and its maximum on 15
    w = (d * q + m).reshape(rows, cols)
    layer = QuantLinear(cols, rows, bits=4, group_size=32, offsets=True, float_min=True, log_scales=False, bias=False)
    layer.fill_rows(0, w)
    assert torch.equal(layer.dequantized(), w)  # linear scales: bit for bit
    assert layer.zeros is None and "zeros" not in layer.state_dict()  # all zero: not stored
    half = QuantLinear(cols, rows, bits=4, group_size=32, offsets=True, float_min=True, log_scales=False,
                       bias=False, offsets_dtype=torch.float16)
    half.fill_rows(0, w)
    assert half.offsets.dtype == torch.float16 and torch.equal(half.dequantized(), w)  # Q4_1's minimums are fp16
    torch.testing.assert_close(layer.offsets.detach(), m.squeeze(-1), rtol=0, atol=0)
    logq = QuantLinear(cols, rows, bits=4, group_size=32, offsets=True, float_min=True, bias=False)
    logq.fill_rows(0, w)
    torch.testing.assert_close(logq.dequantized(), w, rtol=0, atol=1e-6)  # exp(log s): fp32 rounding only
    plain = QuantLinear(cols, rows, bits=4, group_size=32, bias=False)
    plain.fill_rows(0, w)  # integer zero points cannot hold a float minimum
    assert (plain.dequantized() - w).abs().max() > 1e-4
    assert "float_min=True" in repr(layer)


def test_float_min_settings():
    assert QuantConfig(float_min=True).offsets is True
    with pytest.raises(QuantizationError, match="exclude each other"):
        QuantConfig(float_min=True, symmetric=True)
    with pytest.raises(QuantizationError, match="offsets_dtype='int8'"):
        QuantConfig(offsets_dtype="int8")
    with pytest.raises(ValueError, match="needs offsets=True"):
        QuantLinear(32, 4, group_size=32, float_min=True)
    model, ids = tiny()
    quantize_model(model, bits=4, group_size=16, float_min=True)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.float_min and layer.offsets is not None and layer.zeros is None
    assert model.lm_head.float_min and model.lm_head.offsets is model.model.embed_tokens.offsets


def test_a_model_quantized_in_two_passes_is_refused_by_save_and_nothing_is_written(tmp_path):
    model, _ = tiny()
    quantize_model(model, bits=4, group_size=16, embeddings=False, float_min=True)
    quantize_model(model, bits=8, group_size=16, symmetric=True)  # the tied embedding/head only
    target = tmp_path / "q.safetensors"
    with pytest.raises(QuantizationError, match=r"save_quantized: layers \['model.layers.0.self_attn.q_proj'"):
        save_quantized(model, target)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_embedding_settings_of_their_own_build_save_and_load(tmp_path):
    cfg = QuantConfig(bits=4, group_size=16, float_min=True, offsets_dtype="float16",
                      embedding={"bits": 8, "group_size": 32, "symmetric": True})
    emb_cfg = cfg.for_kind("embedding")
    assert (emb_cfg.bits, emb_cfg.group_size, emb_cfg.symmetric, emb_cfg.float_min, emb_cfg.offsets) == (8, 32, True, False, False)
    assert cfg.for_kind("linear") is cfg
    model, ids = tiny()
    quantize_model(model, cfg)
    emb, head, q = model.model.embed_tokens, model.lm_head, model.model.layers[0].self_attn.q_proj
    assert (emb.bits, emb.group_size, emb.offsets) == (8, 32, None) and head.qweight is emb.qweight and head.bits == 8
    assert (q.bits, q.group_size, q.float_min, q.offsets.dtype) == (4, 16, True, torch.float16)
    with torch.no_grad():
        q.scales.add_(0.01)
        ref = model(input_ids=ids).logits
    save_quantized(model, tmp_path / "q.safetensors")
    fresh, _ = tiny()
    load_quantized(fresh, tmp_path / "q.safetensors")
    assert fresh.model.embed_tokens.bits == 8 and fresh.lm_head.scales is fresh.model.embed_tokens.scales
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, ref)


def test_bad_embedding_settings_are_refused():
    with pytest.raises(QuantizationError, match=r"keys \['skip'\] cannot differ"):
        QuantConfig(embedding={"skip": ("x",)})
    with pytest.raises(QuantizationError, match="bits=3"):
        QuantConfig(embedding={"bits": 3})
    model, _ = tiny()
    with pytest.raises(QuantizationError, match=r"model\.embed_tokens .*embedding_dim=32 is not divisible by group_size=24"):
        quantize_model(model, bits=4, group_size=16, embedding={"group_size": 24})
