"""Fine-tuning schemes: the right parameters train, and frozen ones stay bitwise unchanged."""

import pytest
import torch

from forwardonly.errors import UserError
from forwardonly.models import SCHEMES, apply_scheme, tiny_model, trainable_parameters
from forwardonly.tasks import get_task, make_objective

# (arch, scheme, options, expected number of trainable tensors)
CASES = [
    ("llama", "full", {}, 20),
    ("llama", "lora", {"r": 4}, 8),
    ("llama", "prefix", {"num_virtual_tokens": 4}, 1),
    ("llama", "prompt", {"num_virtual_tokens": 4}, 1),
    ("llama", "head", {}, 1),
    ("llama", "bitfit", {"norm": True}, 5),
    ("gpt2", "bitfit", {}, 13),
    ("gpt2", "lora", {}, 4),
    ("opt", "prefix", {}, 1),
    ("qwen2", "bitfit", {}, 6),
    ("gemma3", "prompt", {}, 1),
    ("bert", "head", {}, 2),
    ("bert", "lora", {}, 10),
    ("bert", "bitfit", {}, 20),
    ("llama-int4", "scales", {}, None),
    ("llama", "lora_svd", {"r": 4}, 4),  # one vector of singular values per adapted matrix
    ("llama", "label_bias", {}, 0),  # the bias is attached with the task's label words (below)
]


def _model(arch):
    if arch.endswith("-int4"):
        from forwardonly.quant import quantize_model

        model, tok = tiny_model(arch[: -len("-int4")])
        return quantize_model(model, bits=4, group_size=16), tok
    return tiny_model(arch)


def _fake_zo_step(model, seed=0):
    # What a zeroth-order optimizer does: perturb and update trainable parameters in place.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in trainable_parameters(model):
            p.add_(torch.randn(p.shape, generator=g) * 1e-2)


@pytest.mark.parametrize("arch,scheme,opts,n_trainable", CASES, ids=lambda v: str(v))
def test_frozen_weights_bitwise_unchanged(arch, scheme, opts, n_trainable):
    model, tok = _model(arch)
    model = apply_scheme(model, scheme, **opts)
    trainable = trainable_parameters(model)
    if scheme == "scales":  # exactly the quantization scales, one tensor per quantized layer
        from forwardonly.quant import scale_parameters

        n_trainable = len(scale_parameters(model))
        assert n_trainable > 0 and all("scale" in n for n, _ in trainable)
    assert len(trainable) == n_trainable
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable}
    task = get_task("sentiment")
    obj = make_objective(task, tok, "ce", max_length=64, model=model)
    if scheme == "label_bias":
        from forwardonly.models.lowdim import attach_label_bias

        attach_label_bias(model, obj.label_ids.tolist())
        trainable = trainable_parameters(model)
        assert [n for n, _ in trainable] == ["label_bias.bias"]
        before = {n: p.detach().clone() for n, p in trainable}
    batch = obj.batch(task.splits["train"][:4])
    with torch.no_grad():
        l0 = obj.loss(model, batch)
        _fake_zo_step(model)
        l1 = obj.loss(model, batch)
    assert torch.isfinite(l0) and torch.isfinite(l1)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    assert any(not torch.equal(p, before[n]) for n, p in trainable)


def test_every_scheme_is_covered():
    assert {c[1] for c in CASES} == set(SCHEMES)


def test_trainable_changes_the_output():
    # A prompt-tuning step must reach the loss (virtual tokens are attended to).
    model, tok = tiny_model("llama")
    model = apply_scheme(model, "prompt", num_virtual_tokens=4)
    task = get_task("sentiment")
    obj = make_objective(task, tok, "ce", max_length=64)
    batch = obj.batch(task.splits["train"][:4])
    with torch.no_grad():
        l0 = obj.loss(model, batch)
        for _, p in trainable_parameters(model):
            p.add_(1.0)
        assert not torch.allclose(obj.loss(model, batch), l0)


def test_head_unties_embeddings():
    model, _ = tiny_model("llama")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    apply_scheme(model, "head")
    emb = model.get_input_embeddings().weight
    assert not emb.requires_grad
    assert model.get_output_embeddings().weight.requires_grad
    assert model.get_output_embeddings().weight is not emb


@pytest.mark.parametrize("scheme,opts,msg", [
    ("sgd", {}, "unknown fine-tuning scheme 'sgd'"),
    ("lora", {"rank": 4}, "unknown option(s) rank"),
    ("lora", {"r": 0}, "r=0"),
    ("prompt", {"num_virtual_tokens": 0}, "num_virtual_tokens=0"),
    ("bitfit", {}, "no bias parameters"),
])
def test_bad_scheme_arguments(scheme, opts, msg):
    model, _ = tiny_model("llama")
    with pytest.raises(UserError, match=None) as e:
        apply_scheme(model, scheme, **opts)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_freeze_keeps_matching_parameters_frozen_and_names_bad_patterns():
    model, _ = tiny_model("llama")
    model = apply_scheme(model, "full", freeze=["model.embed_tokens.*", "*.layers.0.*"])
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("model.embed_tokens.") or ".layers.0." in n for n in frozen)
    assert any(p.requires_grad for n, p in model.named_parameters() if ".layers.1." in n)
    with pytest.raises(UserError, match=r"scheme.freeze=\['nothing.\*'\] matches no parameter"):
        apply_scheme(tiny_model("llama")[0], "full", freeze=["nothing.*"])
    with pytest.raises(UserError, match="leaves nothing to train"):
        apply_scheme(tiny_model("llama")[0], "head", freeze=["*"])


def test_scales_scheme_needs_a_quantized_model():
    with pytest.raises(UserError, match="needs a quantized model"):
        apply_scheme(tiny_model("llama")[0], "scales")
