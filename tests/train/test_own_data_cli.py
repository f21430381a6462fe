"""Your own data through ``forwardonly train``/``eval`` on the tiny model: template from the command line,
no validation split needed, the validation cut in the summary, and the sft kind's loss and metrics."""

import json
import math

import pytest
import torch

from forwardonly.cli.main import main
from forwardonly.tasks import evaluate, get_task, make_objective

CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _reviews(n):
    return [{"text": ["good movie", "bad food", "great hotel", "terrible service"][i % 4],
             "label": ["pos", "neg", "pos", "neg"][i % 4]} for i in range(n)]


@pytest.fixture
def tiny(tiny_dir):
    from forwardonly.models import load_model

    return load_model(str(tiny_dir))


def test_bare_jsonl_with_template_from_the_command_line(ov, tmp_path, capsys):
    train = _jsonl(tmp_path / "train.jsonl", _reviews(40))
    out = tmp_path / "run"
    argv = ["train", "--no-progress", *ov("steps=2", f"out_dir={out}"), "task.name=reviews", f"task.data.train={train}",
            "task.template.prompt=Review: {text}\nSentiment:", "task.template.labels=neg,pos", "test=false"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == {"name": "reviews", "kind": "classification", "splits": {"train": 36, "validation": 4},
                               "cut": {"validation": {"cut_from": "train", "fraction": 0.1, "seed": 0, "n": 4}}}
    assert summary["evals"][-1]["n"] == 4
    config = json.loads((out / "config.json").read_text())
    assert config["task"]["data"] == {"train": train} and config["task"]["split_seed"] == 0


def test_no_validation_split_needed_with_validate_false(ov, tmp_path, capsys):
    train = _jsonl(tmp_path / "train.jsonl", _reviews(8))
    argv = ["train", "--no-progress", *ov("steps=1"), "task.name=r", f"task.data.train={train}",
            "task.template.labels=neg,pos", "validate=false", "test=false"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["task"]["splits"] == {"train": 8}


def test_missing_test_split_is_one_line(ov, tmp_path, capsys):
    train = _jsonl(tmp_path / "train.jsonl", _reviews(8))
    argv = ["train", *ov("steps=1", f"out_dir={tmp_path / 'x'}"), "task.name=r", f"task.data.train={train}",
            "task.template.labels=neg,pos"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "no split 'test'" in err and "task.data.test=FILE" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_sft_loss_is_on_completion_tokens_only(tiny, tmp_path):
    model, tok = tiny
    path = _jsonl(tmp_path / "sft.jsonl", [{"prompt": "Question: good movie", "completion": " Yes"},
                                          {"prompt": "Question: the bad food was", "completion": " No it was not"}])
    task = get_task(path, kind="sft")
    examples = task.splits["train"] + task.splits["validation"] + task.splits["test"]
    obj = make_objective(task, tok)
    with torch.no_grad():
        loss = obj.loss(model, obj.batch(examples))
        nll, count = 0.0, 0
        for ex in examples:  # unpadded reference: sum of -log p(completion token | everything before it)
            p = tok(ex["prompt"])["input_ids"]
            c = tok(ex["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
            nll -= sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(c))
            count += len(c)
    assert float(loss) == pytest.approx(nll / count, rel=1e-4)
    with torch.no_grad():  # the prompt's own tokens are not scored: changing the completion changes the count
        other = get_task(_jsonl(tmp_path / "o.jsonl", [{"prompt": "Question: good movie", "completion": " Yes"}]),
                         kind="sft")
        assert obj.batch(other.splits["train"]).cand_len.tolist() == [len(tok(" Yes", add_special_tokens=False)
                                                                          ["input_ids"]) + 1]


def test_sft_chat_through_the_chat_template(tiny, tmp_path):
    _, tok = tiny
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "good movie"},
                                                          {"role": "assistant", "content": "Yes"}]}])
    task = get_task(path, kind="sft")
    obj = make_objective(task, tok)
    with pytest.raises(Exception, match="chat template"):
        obj.batch(task.splits["train"])
    tok.chat_template = CHAT
    b = obj.batch(task.splits["train"])
    k = int(b.cand_len[0])
    assert tok.decode(b.input_ids[0, -k:]) == " Yes</s>\n"
    assert tok.decode(b.input_ids[0, :-k], skip_special_tokens=False).endswith("<s>user: good movie</s>\n<s>assistant:")


def test_sft_evaluation_reports_loss_perplexity_and_exact_match(tiny, tmp_path):
    model, tok = tiny
    rows = [{"prompt": f"Question: {w}", "completion": " Yes", "ref": "Yes"} for w in ("good", "bad", "great")]
    task = get_task(_jsonl(tmp_path / "s.jsonl", rows * 4), kind="sft", reference_field="ref")
    m = evaluate(model, tok, task, "train", progress=False)
    assert set(m) == {"loss", "perplexity", "tokens", "n", "exact_match"} and m["n"] == 10
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"])) and 0.0 <= m["exact_match"] <= 1.0
    plain = get_task(_jsonl(tmp_path / "p.jsonl", rows * 4), kind="sft")
    assert "exact_match" not in evaluate(model, tok, plain, "train", progress=False)


def test_sft_run_from_the_command_line_lowers_its_loss(ov, tmp_path, capsys):
    rows = [{"prompt": "Review: good movie\nSentiment:", "completion": " positive"}] * 16
    train = _jsonl(tmp_path / "train.jsonl", rows)
    argv = ["train", "--no-progress", *ov("steps=6", "optim.name=fo-adam", "optim.lr=1e-2"), "task.name=sft",
            "task.kind=sft", f"task.data.train={train}", f"task.data.validation={train}", "test=false"]
    assert main(argv) == 0
    evals = json.loads(capsys.readouterr().out)["evals"]
    assert evals[-1]["loss"] < evals[0]["loss"] - 0.1 and evals[-1]["perplexity"] < evals[0]["perplexity"]
