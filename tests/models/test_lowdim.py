"""Low-dimensional parameter sets: LoRA in SVD form (ESSA) and a per-label bias."""

import copy

import pytest
import torch

from forwardonly.models import apply_scheme, tiny_model, trainable_parameters
from forwardonly.models.lowdim import SV_NAME, attach_label_bias, folded, to_svd_form

pytest.importorskip("peft")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 42, 7, 99, 3]])


def test_lora_svd_starts_as_the_base_model_and_trains_only_singular_values():
    base, _ = tiny_model("llama", seed=0)
    want = _logits(base, IDS)
    model = apply_scheme(copy.deepcopy(base), "lora_svd", r=4)
    names = [n for n, _ in trainable_parameters(model)]
    assert names and all(n.endswith(f"{SV_NAME}.default.s") for n in names)
    assert all(p.numel() == 4 for _, p in trainable_parameters(model))
    assert torch.equal(_logits(model, IDS), want)  # s = 0: the adapters add nothing
    for module in model.modules():  # U and V are orthonormal
        if hasattr(module, SV_NAME):
            u, vt = module.lora_B["default"].weight, module.lora_A["default"].weight
            torch.testing.assert_close(u.T @ u, torch.eye(4), atol=1e-5, rtol=0)
            torch.testing.assert_close(vt @ vt.T, torch.eye(4), atol=1e-5, rtol=0)


def test_folded_adapter_is_the_same_function_as_a_plain_lora_and_b_is_restored_bitwise():
    model = apply_scheme(tiny_model("llama", seed=0)[0], "lora_svd", r=4)
    with torch.no_grad():
        for i, (_, p) in enumerate(trainable_parameters(model)):
            p.copy_(torch.linspace(-0.5, 0.5 + i, 4))
    got = _logits(model, IDS)
    bs = [m.lora_B["default"].weight.detach().clone() for m in model.modules() if hasattr(m, SV_NAME)]
    with folded(model):
        torch.testing.assert_close(_logits(model, IDS), got, atol=1e-5, rtol=1e-5)
    after = [m.lora_B["default"].weight for m in model.modules() if hasattr(m, SV_NAME)]
    assert all(torch.equal(a, b) for a, b in zip(bs, after))
    assert not torch.equal(got, _logits(apply_scheme(tiny_model("llama", seed=0)[0], "lora_svd", r=4), IDS))


def test_a_nonzero_adapter_is_put_in_svd_form_without_changing_the_function():
    model = apply_scheme(tiny_model("llama", seed=0)[0], "lora", r=4)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    want = _logits(model, IDS)
    assert to_svd_form(model) == 4
    torch.testing.assert_close(_logits(model, IDS), want, atol=1e-5, rtol=1e-5)


def test_label_bias_moves_only_the_label_words_logits():
    model, _ = tiny_model("llama", seed=0)
    before = _logits(model, IDS)
    apply_scheme(model, "label_bias")
    bias = attach_label_bias(model, [11, 23])
    assert [n for n, _ in trainable_parameters(model)] == ["label_bias.bias"]
    with torch.no_grad():
        bias.bias.copy_(torch.tensor([1.5, -2.0]))
    after = _logits(model, IDS)
    delta = after - before
    torch.testing.assert_close(delta[..., 11], torch.full_like(delta[..., 11], 1.5))
    torch.testing.assert_close(delta[..., 23], torch.full_like(delta[..., 23], -2.0))
    delta[..., [11, 23]] = 0
    assert torch.equal(delta, torch.zeros_like(delta))
