"""A run's standard outputs: ``final/`` and ``forwardonly export`` load with the Hugging Face / PEFT classes
and score as the run did."""

import json

import pytest
import torch

from forwardonly.cli.main import main
from forwardonly.lm.train import run
from forwardonly.models import prepare_tokenizer
from forwardonly.tasks import evaluate, get_task

pytestmark = pytest.mark.integration


def _score(model, tok):
    return evaluate(model, prepare_tokenizer(tok), get_task("sentiment"), "test", batch_size=8,
                    max_examples=16, progress=False)


def _logits(model, tok):
    batch = tok(["the movie was good", "terrible service"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def _train(cfg_of, tmp_path, *extra):
    out = tmp_path / "run"
    summary = run(cfg_of("steps=3", "optim.lr=1e-2", "validate=false", f"out_dir={out}", *extra),
                  progress=False)
    return out, summary


@pytest.mark.parametrize("kind", ["causal", "classifier"])
def test_a_lora_run_ends_with_a_peft_adapter_and_exports_merged(cfg_of, tiny_dir, tmp_path, capsys, kind):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    out, summary = _train(cfg_of, tmp_path, "scheme.name=lora", "scheme.r=2", f"model.kind={kind}")
    final = out / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    assert not (final / "model.safetensors").exists()  # the adapter only, not a copy of the base model
    tok = AutoTokenizer.from_pretrained(final)
    base = auto.from_pretrained(tiny_dir, **({"num_labels": 2} if kind == "classifier" else {}))
    before = _logits(base, tok)
    adapted = PeftModel.from_pretrained(base, final).eval()
    assert torch.equal(_logits(adapted, tok), _logits(summary["model"], tok))
    assert not torch.allclose(_logits(adapted, tok), before)  # the adapter moved the model
    assert _score(adapted, tok) == summary["test_after"]

    merged_dir = tmp_path / "merged"
    assert main(["export", "--run", str(out), "--merge", f"out_dir={merged_dir}"]) == 0
    assert capsys.readouterr().out.strip() == str(merged_dir)
    assert not (merged_dir / "adapter_config.json").exists()
    merged = auto.from_pretrained(merged_dir).eval()
    torch.testing.assert_close(_logits(merged, tok), _logits(summary["model"], tok), rtol=1e-5, atol=1e-5)
    assert _score(merged, AutoTokenizer.from_pretrained(merged_dir)) == summary["test_after"]

    adapter_dir = tmp_path / "adapter"
    assert main(["export", "--run", str(out), f"out_dir={adapter_dir}"]) == 0
    labels = {"num_labels": 2} if kind == "classifier" else {}
    again = PeftModel.from_pretrained(auto.from_pretrained(tiny_dir, **labels), adapter_dir).eval()
    assert torch.equal(_logits(again, tok), _logits(summary["model"], tok))


def test_a_full_run_ends_with_the_whole_model_and_its_tokenizer(cfg_of, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = _train(cfg_of, tmp_path, "scheme.name=full")
    final = out / "final"
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    assert torch.equal(_logits(model, tok), _logits(summary["model"], tok))
    assert _score(model, tok) == summary["test_after"]
    assert summary["final"] == str(final)


def test_export_refuses_what_it_cannot_do_and_overwrites_nothing(cfg_of, tmp_path, capsys):
    out, _ = _train(cfg_of, tmp_path, "scheme.name=prefix", "test=false")
    capsys.readouterr()
    assert main(["export", "--run", str(out), "--merge", f"out_dir={tmp_path / 'm'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("forwardonly export: error: --merge: the run's scheme is 'prefix': its virtual tokens "
                   "have no base weights to merge into; export without --merge")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", "--run", str(out), "--out", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err and (taken / "keep.txt").read_text() == "mine"
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "is not a run directory" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["export", "--run", str(out)]) == 2  # no output directory named
    assert capsys.readouterr().err.strip() == "forwardonly export: error: export: name the directory to write: out_dir=DIR"


def test_eval_of_a_seed_log_names_the_model_the_run_was_made_on(ov, tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *ov("steps=2", "optim.lr=1e-3", "validate=false",
                                               f"out_dir={out}")]) == 0
    capsys.readouterr()
    seedlog = str(out / "seedlog.json")
    assert main(["eval", "--no-progress", "--seedlog", seedlog, "task.max_test=4", "threads=1"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(tiny_dir)


@pytest.mark.parametrize("held", [("model.quant.bits=4", "model.quant.group_size=16", "scheme.name=scales"),
                                  ("model.offload.tier=disk", "scheme.name=full")], ids=["quant", "offload"])
def test_quantized_and_streamed_runs_end_with_a_standard_final_directory(cfg_of, tmp_path, capsys, held):
    """final/ and `forwardonly export` of a quantized run hold its layers dequantized (the trained scales
    applied), of a streamed run the weights from its store: AutoModelForCausalLM loads either and scores
    what the run scored."""
    from transformers import AutoModelForCausalLM

    out, summary = _train(cfg_of, tmp_path, *held)
    from transformers import AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert _score(loaded, tok)["accuracy"] == summary["test_after"]["accuracy"]
    capsys.readouterr()
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "x")]) == 0
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "x")
    for (n, a), (_, b) in zip(loaded.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
