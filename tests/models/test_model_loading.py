"""Loading models: tiny models, local directories, the zoo cache, and errors."""

import json

import pytest
import torch

from forwardonly.errors import UserError
from forwardonly.models import load_model, tiny_model, zoo
from forwardonly.models.tiny import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_is_seeded_and_runs(arch):
    m1, tok = tiny_model(arch, seed=3)
    m2, _ = tiny_model(arch, seed=3)
    m3, _ = tiny_model(arch, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(m1.parameters(), m3.parameters()))
    enc = tok(["a good movie", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(m1(**enc).logits).all()


def test_tiny_model_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    tiny_model("llama", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_tokenizer_label_words_are_single_tokens():
    _, tok = tiny_model()
    for word in (" positive", " negative", " Yes", " No"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1
    assert tok.padding_side == "left" and tok.pad_token_id == 0


def test_load_local_directory(tmp_path):
    model, tok = tiny_model("gpt2", seed=1)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, ltok = load_model(str(tmp_path))
    assert type(loaded).__name__ == "GPT2LMHeadModel" and ltok.padding_side == "left"
    assert not loaded.training
    sd = model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in loaded.state_dict().items())


def test_load_directory_as_classifier(tmp_path):
    model, tok = tiny_model("bert")
    model.bert.save_pretrained(tmp_path)  # an encoder without a head, like the MiniLM package
    tok.save_pretrained(tmp_path)
    clf, _ = load_model(str(tmp_path), kind="classifier", num_labels=3)
    assert clf.config.num_labels == 3


def test_missing_zoo_model_suggests_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("FORWARDONLY_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="forwardonly models fetch smollm2-135m"):
        load_model("smollm2-135m")


@pytest.mark.parametrize("spec,msg", [
    ("./no/such/dir", "model path not found"),
    ("/tmp/nothing-here.gguf", "model path not found"),
    ("smollm2", "did you mean 'smollm2-135m'"),
])
def test_bad_model_specs(spec, msg, tmp_path, monkeypatch):
    monkeypatch.setenv("FORWARDONLY_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=msg) as e:
        load_model(spec)
    assert "\n" not in str(e.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))


def test_bad_kind(tmp_path):
    with pytest.raises(UserError, match="kind"):
        load_model(str(tmp_path), kind="seq2seq")


def _fake_entry(monkeypatch, tmp_path, locate):
    entry = zoo.ZooEntry("tiny-test", "causal", ("tiny-test-pkg==0",), "json", locate, "test entry")
    monkeypatch.setitem(zoo.ZOO, "tiny-test", entry)
    monkeypatch.setenv("FORWARDONLY_CACHE", str(tmp_path / "cache"))


def test_fetch_builds_cache_atomically(tmp_path, monkeypatch):
    src = tmp_path / "pkgmodel"
    model, tok = tiny_model("llama", seed=2)
    model.save_pretrained(src)
    tok.save_pretrained(src)
    _fake_entry(monkeypatch, tmp_path, lambda pkg, scratch: src)
    path = zoo.fetch("tiny-test")
    assert json.loads((path / zoo.MANIFEST).read_text())["kind"] == "causal"
    loaded, _ = load_model("tiny-test")
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert next(r for r in zoo.listing() if r["name"] == "tiny-test")["cached"]

    def broken(pkg, scratch):
        raise RuntimeError("disk full")

    monkeypatch.setitem(zoo.ZOO, "tiny-test", zoo.ZooEntry("tiny-test", "causal", ("x==0",), "json", broken, ""))
    with pytest.raises(RuntimeError):
        zoo.fetch("tiny-test", force=True)
    # The complete old copy survives a failed rebuild, and no temporary directories are left.
    assert zoo.cached("tiny-test") == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny-test"]


def test_fetch_unknown_name():
    with pytest.raises(UserError, match="unknown zoo model 'llama-7b'"):
        zoo.fetch("llama-7b")


@pytest.mark.model
def test_smollm2_from_cache():
    if zoo.cached("smollm2-135m") is None:
        pytest.skip("smollm2-135m not cached (forwardonly models fetch smollm2-135m)")
    model, tok = load_model("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(tok(" positive", add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.parametrize("kind", ["causal", "classifier"])
def test_a_directory_exported_from_gguf_loads_and_saves(tmp_path, kind):
    """A model directory written from a GGUF file by an older export keeps the GGUF ``quantization_config`` in
    its config.json (the zoo's SmolLM2-135M cache does); its weights are plain, and the model must save."""
    import shutil

    model, tok = tiny_model("llama", seed=0)
    src = tmp_path / "from-gguf"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"dequantize": False, "gguf_file": "m.Q4_1.gguf", "quant_method": "gguf"}
    (src / "config.json").write_text(json.dumps(cfg))
    loaded, _ = load_model(str(src), kind=kind, num_labels=3)
    assert getattr(loaded, "hf_quantizer", None) is None
    if kind == "classifier":
        assert loaded.score.out_features == 3
    else:
        assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters()))
    loaded.save_pretrained(tmp_path / "saved")  # refused while the GGUF reader was named
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    shutil.rmtree(src)
