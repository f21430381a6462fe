"""model.pooling: a BERT classifier's head reading the masked mean of the last hidden states."""

import pytest
import torch

from forwardonly.config import load_config
from forwardonly.errors import UserError
from forwardonly.lm.config import TrainConfig
from forwardonly.lm.train import replay_seedlog, run
from forwardonly.models.pooling import MeanPooler, apply_pooling, use_mean_pooling
from forwardonly.models.tiny import tiny_model


def test_mean_pooling_is_the_masked_mean_of_the_last_hidden_states():
    model, tok = tiny_model("bert", seed=0)
    enc = tok(["a good movie", "the food was terrible and the staff was bad"], return_tensors="pt", padding=True,
              padding_side="right")
    assert enc["attention_mask"][0].sum() < enc["attention_mask"][1].sum()  # row 0 is padded (on the right, as the
    # classifier objective pads)
    before = model(**enc).logits
    use_mean_pooling(model)
    assert isinstance(model.bert.pooler, MeanPooler)
    assert not any("pooler" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        hidden = model.bert(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        want = model.classifier((hidden * m).sum(1) / m.sum(1))
        got = model(**enc).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, before)
    # padding does not change a row's pooled features: row 0 alone, unpadded, scores the same
    alone = tok(["a good movie"], return_tensors="pt")
    torch.testing.assert_close(model(**alone).logits[0], got[0], rtol=1e-4, atol=1e-5)
    assert use_mean_pooling(model) is model  # applying twice changes nothing


def test_pooling_errors_name_the_value():
    with pytest.raises(UserError, match="model.pooling='max' is not one of"):
        apply_pooling(tiny_model("bert")[0], "max")
    with pytest.raises(UserError, match="model.pooling=mean needs an encoder classifier with a pooler"):
        apply_pooling(tiny_model("llama")[0], "mean")
    llama = tiny_model("llama")[0]
    assert apply_pooling(llama, "default") is llama


def test_a_mean_pooled_run_fits_its_probe_on_the_mean_and_replays_exactly(tiny_bert_dir, tmp_path):
    over = [f"model.name={tiny_bert_dir}", "model.kind=classifier", "model.pooling=mean",
            "model.head_init=linear_probe", "task.shots_per_class=8", "scheme.name=full", "validate=false",
            "task.max_test=16", "batch_size=4", "eval_batch_size=8", "threads=1", "steps=3",
            "optim.lr=1e-3", f"out_dir={tmp_path / 'run'}"]
    out = run(load_config(TrainConfig, None, over), progress=False)
    assert isinstance(out["model"].bert.pooler, MeanPooler)
    model, _ = replay_seedlog(tmp_path / "run" / "seedlog.json")
    assert isinstance(model.bert.pooler, MeanPooler)
    for (n, a), (_, b) in zip(out["model"].named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), n
