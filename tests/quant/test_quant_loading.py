"""Loading a checkpoint straight into quantized layers equals loading it in fp32 and quantizing it."""

import pytest
import torch

from forwardonly.errors import UserError
from forwardonly.quant import QuantEmbedding, QuantLinear, load_pretrained_quantized, quantize_model


def saved(tmp_path, arch="llama"):
    from forwardonly.models import tiny_model

    model, tok = tiny_model(arch, seed=0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path


def reference(path, **kw):
    from forwardonly.models import load_model

    model, _ = load_model(str(path))
    return quantize_model(model, **kw)


IDS = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch,bits,block_rows", [("llama", 4, 7), ("qwen2", 8, 1024)])
def test_streamed_load_is_bitwise_the_quantized_fp32_model(tmp_path, arch, bits, block_rows):
    path = saved(tmp_path, arch)
    ref = reference(path, bits=bits, group_size=16)
    model, tok = load_pretrained_quantized(str(path), bits=bits, group_size=16, block_rows=block_rows)
    a, b = ref.state_dict(), model.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert dict(ref.named_buffers()).keys() == dict(model.named_buffers()).keys()
    assert all(torch.equal(x, y) for x, y in zip(ref.buffers(), model.buffers()))  # rotary frequencies too
    assert isinstance(model.model.embed_tokens, QuantEmbedding) and isinstance(model.lm_head, QuantLinear)
    assert model.lm_head.scales is model.model.embed_tokens.scales
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert not model.training and tok.padding_side == "left"
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, ref(input_ids=IDS).logits)


def test_fill_rows_in_blocks_equals_whole_quantization():
    lin = torch.nn.Linear(64, 37)
    whole = QuantLinear.from_linear(lin, bits=4, group_size=16)
    parts = QuantLinear(64, 37, bits=4, group_size=16)
    for r in range(0, 37, 5):
        parts.fill_rows(r, lin.weight[r:r + 5].detach())
    assert torch.equal(whole.qweight, parts.qweight) and torch.equal(whole.zeros, parts.zeros)
    assert torch.equal(whole.scales, parts.scales)


def test_a_checkpoint_missing_a_tensor_is_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    path = saved(tmp_path)
    state = load_file(str(path / "model.safetensors"))
    del state["model.norm.weight"]
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"lacks 1 tensor.*model\.norm\.weight"):
        load_pretrained_quantized(str(path), bits=4, group_size=16)


def test_bad_block_rows_and_group_size_fail_up_front(tmp_path):
    path = saved(tmp_path)
    with pytest.raises(ValueError, match="block_rows: 0"):
        load_pretrained_quantized(str(path), bits=4, group_size=16, block_rows=0)
    with pytest.raises(ValueError, match="not divisible by group_size=24"):
        load_pretrained_quantized(str(path), bits=4, group_size=24)


@pytest.mark.slow
def test_smollm2_streamed_int4_equals_quantized_fp32_and_keeps_fp32_weights_out_of_memory():
    from forwardonly.bench.measure import PeakMemory
    from forwardonly.models import zoo

    if zoo.cached("smollm2-135m") is None:
        pytest.skip("smollm2-135m not cached (forwardonly models fetch smollm2-135m)")
    model, _ = load_pretrained_quantized("smollm2-135m", bits=4, group_size=64)
    with PeakMemory() as mem:  # a second load, with the libraries already imported
        again, _ = load_pretrained_quantized("smollm2-135m", bits=4, group_size=64)
    del again
    # the fp32 weights alone are 538 MB; the quantized model is 78 MB (plus a tokenizer, one block at a time)
    assert mem.peak_anon - mem.start_anon < 150 * 2**20
    ref = reference(zoo.cached("smollm2-135m"), bits=4, group_size=64)
    a, b = ref.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, 49152, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_streamed_load_with_float_minimums_is_bitwise_the_quantized_fp32_model(tmp_path):
    path = saved(tmp_path)
    ref = reference(path, bits=4, group_size=16, float_min=True)
    model, _ = load_pretrained_quantized(str(path), bits=4, group_size=16, float_min=True, block_rows=5)
    a, b = ref.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and any(k.endswith("offsets") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert model.lm_head.offsets is model.model.embed_tokens.offsets


def test_streamed_load_with_embedding_settings_of_their_own_is_bitwise_the_quantized_fp32_model(tmp_path):
    path = saved(tmp_path)
    kw = dict(bits=4, group_size=16, float_min=True, embedding={"bits": 8, "group_size": 32, "symmetric": True})
    ref = reference(path, **kw)
    model, _ = load_pretrained_quantized(str(path), block_rows=5, **kw)
    a, b = ref.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert model.model.embed_tokens.bits == 8 and model.model.layers[0].mlp.up_proj.bits == 4


def test_row_reader_reads_what_safetensors_reads_without_mapping_the_file(tmp_path):
    from safetensors.torch import load_file, save_file

    from forwardonly.quant.loading import RowReader

    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(37, 5, generator=g).bfloat16(), "b": torch.randn(11, generator=g),
               "s": torch.tensor(2.5, dtype=torch.float16), "i": torch.arange(12, dtype=torch.int64).reshape(3, 4)}
    save_file(tensors, tmp_path / "x.safetensors")
    ref = load_file(tmp_path / "x.safetensors")
    with RowReader(tmp_path / "x.safetensors") as f:
        assert sorted(f.keys()) == sorted(tensors) and f.shape("w") == (37, 5)
        assert torch.equal(f.rows("w", 3, 20), ref["w"][3:20]) and f.rows("w", 3, 20).dtype == torch.bfloat16
        assert torch.equal(f.rows("w", 30, 99), ref["w"][30:])  # a block past the end is cut at the end
        assert torch.equal(f.rows("b"), ref["b"]) and torch.equal(f.rows("i", 1, 3), ref["i"][1:3])
        assert f.rows("s").shape == () and float(f.rows("s")) == 2.5
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(UserError, match=r"bad.safetensors: not a safetensors file"):
        RowReader(tmp_path / "bad.safetensors")
