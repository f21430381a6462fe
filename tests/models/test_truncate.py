"""model.layers: keep the first N blocks, so the head reads block N's output."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from forwardonly.config import load_config
from forwardonly.errors import UserError
from forwardonly.lm.config import TrainConfig
from forwardonly.lm.train import replay_seedlog, run
from forwardonly.models.tiny import tiny_model, tiny_tokenizer
from forwardonly.models.truncate import keep_first_layers


def _enc():
    return tiny_tokenizer()(["a good movie", "the food was terrible"], return_tensors="pt", padding=True)


def test_a_cut_decoder_reads_block_n_through_its_final_norm():
    full, _ = tiny_model("llama", seed=0)
    cut, _ = tiny_model("llama", seed=0)
    enc = _enc()
    with torch.no_grad():
        hidden = full.model(**enc, output_hidden_states=True).hidden_states  # embeddings, block 0, block 1 (normed)
        keep_first_layers(cut, 1)
        got = cut.model(**enc).last_hidden_state
    assert len(cut.model.layers) == 1 and cut.config.num_hidden_layers == 1
    torch.testing.assert_close(got, full.model.norm(hidden[1]), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, hidden[2])
    n_full = sum(p.numel() for p in full.parameters())
    n_block = sum(p.numel() for p in full.model.layers[1].parameters())
    assert sum(p.numel() for p in cut.parameters()) == n_full - n_block


def test_a_cut_encoder_classifier_reads_block_n_and_saves_as_the_smaller_model(tmp_path):
    full, _ = tiny_model("bert", seed=0)
    cut, _ = tiny_model("bert", seed=0)
    keep_first_layers(cut, 1)
    enc = _enc()
    with torch.no_grad():
        hidden = full.bert(**enc, output_hidden_states=True).hidden_states
        torch.testing.assert_close(cut.bert(**enc).last_hidden_state, hidden[1], rtol=1e-5, atol=1e-6)
        cut.save_pretrained(tmp_path / "cut")
        back = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cut").eval()
        assert len(back.bert.encoder.layer) == 1
        torch.testing.assert_close(back(**enc).logits, cut(**enc).logits)


def test_keeping_every_block_or_none_changes_nothing_and_too_many_is_an_error():
    model, _ = tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    assert keep_first_layers(model, 0) is model and keep_first_layers(model, 2) is model
    assert {n: p for n, p in model.named_parameters()}.keys() == before.keys()
    with pytest.raises(UserError, match=r"model.layers=3 must be between 1 and the model's 2 blocks"):
        keep_first_layers(model, 3)
    assert len(model.model.layers) == 2  # nothing cut by the refused call
    with pytest.raises(UserError, match=r"model.layers=-1 must be between 1"):
        keep_first_layers(model, -1)


@pytest.mark.parametrize("override, message", [
    ("model.layers=-2", "model.layers=-2 must be >= 0"),
    ("model.layers=1 model.quant.bits=4", "model.layers=1 works on a plain model only, not with model.quant"),
])
def test_config_errors_name_the_value(override, message):
    with pytest.raises((UserError, ValueError), match=message):
        load_config(TrainConfig, None, override.split())


def test_a_cut_classifier_run_fits_its_probe_on_block_n_and_replays_exactly(tiny_dir, tmp_path):
    over = [f"model.name={tiny_dir}", "model.kind=classifier", "model.layers=1", "model.head_init=linear_probe",
            "model.head_standardize=true", "task.shots_per_class=8", "scheme.name=bitfit", "scheme.norm=true",
            "validate=false", "task.max_test=16", "batch_size=4", "eval_batch_size=8", "threads=1", "steps=3",
            "optim.lr=1e-3", f"out_dir={tmp_path / 'run'}"]
    out = run(load_config(TrainConfig, None, over), progress=False)
    model = out["model"]
    assert len(model.model.layers) == 1
    assert not any(n.startswith("model.layers.1.") for n, _ in model.named_parameters())
    replayed, _ = replay_seedlog(tmp_path / "run" / "seedlog.json")
    assert len(replayed.model.layers) == 1
    theirs = dict(replayed.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in model.named_parameters())
    final = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final")
    assert final.config.num_hidden_layers == 1 and len(final.model.layers) == 1
