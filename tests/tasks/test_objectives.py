"""Objectives and evaluation: batched scoring equals a slow per-example reference."""

import pytest
import torch
import torch.nn.functional as F

from forwardonly.errors import UserError
from forwardonly.models import apply_scheme, load_model, tiny_model, zoo
from forwardonly.tasks import evaluate, get_task, make_objective
from forwardonly.tasks.objectives import QA, Classifier, LabelWords, Options


def _reference_logprob(model, tok, prompt, cand):
    """Log-probability of ``cand`` after ``prompt``: one unpadded example, full logits."""
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    c = tok(cand, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logp[len(p) - 1 + i, t].item() for i, t in enumerate(c)), len(c)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gemma3"])
def test_label_words_match_reference(arch):
    model, tok = tiny_model(arch, seed=1)
    task = get_task("sentiment")
    obj = make_objective(task, tok, "ce", max_length=256)
    assert isinstance(obj, LabelWords)
    examples = task.splits["test"][:6]  # different lengths, so rows are padded
    batch = obj.batch(examples)
    assert (batch.attention_mask == 0).any()
    with torch.no_grad():
        scores = obj.scores(model, batch)
        ref = torch.tensor([[_reference_logprob(model, tok, ex["prompt"], c)[0] for c in ex["choices"]]
                            for ex in examples])
        # Label-word logits differ from log-probs by a per-row constant; compare the softmax over labels.
        torch.testing.assert_close(scores.log_softmax(-1), ref.log_softmax(-1), atol=2e-4, rtol=0)
        torch.testing.assert_close(obj.loss(model, batch), F.cross_entropy(ref, batch.target), atol=2e-4, rtol=0)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_options_match_reference(reduce):
    model, tok = tiny_model("llama", seed=2)
    task = get_task("social_iqa", score=reduce)
    obj = make_objective(task, tok, "ce", max_length=256)
    assert isinstance(obj, Options)
    examples = task.splits["test"][:4]
    with torch.no_grad():
        scores = obj.scores(model, obj.batch(examples))
        for i, ex in enumerate(examples):
            for j, c in enumerate(ex["choices"]):
                total, n = _reference_logprob(model, tok, ex["prompt"], c)
                assert scores[i, j].item() == pytest.approx(total / n if reduce == "mean" else total, abs=2e-4)


def test_varying_option_counts_are_masked():
    model, tok = tiny_model("llama")
    task = get_task("social_iqa")
    a, b = (dict(ex) for ex in task.splits["test"][:2])
    a["choices"] = a["choices"][:2]
    a["target"] = min(a["target"], 1)
    obj = make_objective(task, tok, "ce")
    with torch.no_grad():
        s = obj.scores(model, obj.batch([a, b]))
        assert s.shape == (2, 3) and s[0, 2] == float("-inf") and torch.isfinite(obj.loss(model, obj.batch([a, b])))


def test_multi_token_labels_use_option_scoring():
    model, tok = tiny_model("llama")
    task = get_task("sentiment", labels={"negative": " awful stuff", "positive": " lovely stuff"})
    obj = make_objective(task, tok, "ce")
    assert isinstance(obj, Options)
    with torch.no_grad():
        assert torch.isfinite(obj.loss(model, obj.batch(task.splits["train"][:3])))


def test_label_that_tokenizes_to_nothing():
    _, tok = tiny_model("llama")
    task = get_task("sentiment", labels={"negative": " negative", "positive": "\u200b"})
    with pytest.raises(UserError, match=r"label word '\\u200b' \(label 'positive'\) tokenizes to nothing"):
        make_objective(task, _EmptyTok(tok))
    with pytest.raises(UserError, match="label word for 'positive' is empty"):
        get_task("sentiment", labels={"negative": " negative", "positive": " "})


class _EmptyTok:
    """A tokenizer that maps one word to no tokens (as some tokenizers do for odd characters)."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, text, **kw):
        return {"input_ids": []} if text == "\u200b" else self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_accuracy_and_f1_objectives():
    model, tok = tiny_model("llama")
    task = get_task("sentiment")
    batch_examples = task.splits["train"][:8]
    with torch.no_grad():
        acc = make_objective(task, tok, "accuracy")
        b = acc.batch(batch_examples)
        pred = acc.predict(model, b)
        assert acc.loss(model, b).item() == pytest.approx(1 - (pred == b.target).float().mean().item())
        f1 = make_objective(task, tok, "f1")
        pred = f1.predict(model, f1.batch(batch_examples)).tolist()
        target = [ex["target"] for ex in batch_examples]
        # macro F1 from the confusion counts, written out here (classes absent from both count as 1)
        per_class = []
        for c in (0, 1):
            tp = sum(p == c and t == c for p, t in zip(pred, target))
            wrong = sum((p == c) != (t == c) for p, t in zip(pred, target))
            per_class.append(1.0 if tp + wrong == 0 else 2 * tp / (2 * tp + wrong))
        assert f1.loss(model, f1.batch(batch_examples)).item() == pytest.approx(1 - sum(per_class) / 2)


class _FixedLogits(torch.nn.Module):
    """A causal-LM stand-in: the last position's logits are given per row, so every prediction is known."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = rows

    def forward(self, input_ids, attention_mask=None, logits_to_keep=1, **kw):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.rows[:, None, :])


def test_f1_and_accuracy_objectives_on_known_predictions():
    """Two negatives and two positives predicted (negative, positive, positive, positive): accuracy 3/4; F1 of
    'negative' 2/3 (1 hit, 1 miss), of 'positive' 4/5 (2 hits, 1 false alarm); macro F1 11/15."""
    _, tok = tiny_model("llama")
    task = get_task("sentiment")
    neg = [ex for ex in task.splits["train"] if ex["target"] == 0][:2]
    pos = [ex for ex in task.splits["train"] if ex["target"] == 1][:2]
    obj = {name: make_objective(task, tok, name) for name in ("f1", "accuracy", "ce")}
    labels = obj["f1"].label_ids
    logits = torch.zeros(4, len(tok))
    for row, label in enumerate((0, 1, 1, 1)):
        logits[row, labels[label]] = 5.0
    model = _FixedLogits(logits)
    batch = obj["f1"].batch(neg + pos)
    assert obj["f1"].predict(model, batch).tolist() == [0, 1, 1, 1]
    assert obj["f1"].loss(model, batch).item() == pytest.approx(1 - 11 / 15)
    assert obj["accuracy"].loss(model, batch).item() == pytest.approx(0.25)
    wrong = torch.log1p(torch.exp(torch.tensor(5.0))).item()  # -log softmax of the other label at 0 vs 5
    right = torch.log1p(torch.exp(torch.tensor(-5.0))).item()
    assert obj["ce"].loss(model, batch).item() == pytest.approx((3 * right + wrong) / 4, rel=1e-5)


class _FixedAnswers(torch.nn.Module):
    """A generator stand-in: ``generate`` appends the given answer text (then a newline) to each prompt."""

    def __init__(self, tok, answers: list[str]):
        super().__init__()
        self.tok, self.answers = tok, answers

    def generate(self, input_ids, **kw):
        ids = [self.tok(a + "\nignored", add_special_tokens=False)["input_ids"] for a in self.answers]
        width = max(map(len, ids))
        rows = [list(p) + i + [self.tok.pad_token_id] * (width - len(i)) for p, i in zip(input_ids.tolist(), ids)]
        return torch.tensor(rows)


def test_qa_objectives():
    model, tok = tiny_model("llama")
    task = get_task("disfl_qa")
    examples = task.splits["train"][:2]
    with torch.no_grad():
        ce = make_objective(task, tok, "ce", max_length=128)
        assert isinstance(ce, QA) and ce.loss(model, ce.batch(examples)).item() > 0
        f1 = make_objective(task, tok, "f1", max_length=128)
        em = make_objective(task, tok, "accuracy", max_length=128)
        # the first answer exactly; the second with one extra word: precision n/(n+1), recall 1, F1 2n/(2n+1)
        first, second = (ex["answers"][0] for ex in examples)
        stub = _FixedAnswers(tok, [first, second + " zebra"])
        n = len(second.split())
        assert f1.loss(stub, f1.batch(examples)).item() == pytest.approx(1 - (1 + 2 * n / (2 * n + 1)) / 2)
        assert em.loss(stub, em.batch(examples)).item() == pytest.approx(0.5)


def test_classifier_objective():
    model, tok = tiny_model("bert")
    task = get_task("sentiment")
    obj = make_objective(task, tok, "ce", model=model)
    assert isinstance(obj, Classifier)
    with torch.no_grad():
        assert torch.isfinite(obj.loss(model, obj.batch(task.splits["train"][:4])))
    lora = apply_scheme(model, "lora")
    assert isinstance(make_objective(task, tok, "ce", model=lora), Classifier)
    with pytest.raises(UserError, match="classification and yes_no tasks only"):
        make_objective(get_task("social_iqa"), tok, model=model)


def test_bad_objective_arguments():
    _, tok = tiny_model()
    task = get_task("sentiment")
    with pytest.raises(UserError, match="objective 'mse'"):
        make_objective(task, tok, "mse")
    with pytest.raises(UserError, match="max_length=2"):
        make_objective(task, tok, max_length=2)


@pytest.mark.parametrize("name,keys", [("sentiment", {"accuracy", "macro_f1", "n"}),
                                       ("social_iqa", {"accuracy", "n"}),
                                       ("strategyqa", {"accuracy", "macro_f1", "n"}),
                                       ("disfl_qa", {"f1", "exact_match", "n"})])
def test_evaluate_shapes(name, keys):
    model, tok = tiny_model("llama")
    task = get_task(name)
    r = evaluate(model, tok, task, "test", batch_size=3, max_examples=5, progress=False, max_length=128)
    assert set(r) == keys and r["n"] == 5


def test_evaluate_is_order_and_batch_size_invariant():
    model, tok = tiny_model("gpt2", seed=5)
    task = get_task("sentiment")
    a = evaluate(model, tok, task, "validation", batch_size=1, max_examples=24, progress=False)
    b = evaluate(model, tok, task, "validation", batch_size=16, max_examples=24, progress=False)
    assert a == b


def test_evaluate_bad_split():
    model, tok = tiny_model()
    with pytest.raises(UserError, match="no split 'dev'"):
        evaluate(model, tok, get_task("sentiment"), "dev")


@pytest.mark.model
def test_smollm2_sentiment_zero_shot():
    if zoo.cached("smollm2-135m") is None:
        pytest.skip("smollm2-135m not cached (forwardonly models fetch smollm2-135m)")
    model, tok = load_model("smollm2-135m")
    r = evaluate(model, tok, get_task("sentiment"), "test", max_examples=64, progress=False)
    assert r["accuracy"] > 0.65  # 78.5% on all 400 test sentences


@pytest.mark.parametrize("task_name,kind,objective", [
    ("sentiment", "llama", "ce"), ("sentiment", "llama", "accuracy"), ("social_iqa", "llama", "ce"),
    ("disfl_qa", "llama", "ce"), ("sentiment", "bert", "ce"),
])
def test_paired_loss_is_the_loss_twice_at_an_unperturbed_point(task_name, kind, objective):
    """``paired_loss`` runs one forward over the doubled batch; unperturbed, both halves give ``loss``."""
    model, tok = tiny_model(kind, seed=3)
    task = get_task(task_name)
    obj = make_objective(task, tok, objective, max_length=128, **({"model": model} if kind == "bert" else {}))
    batch = obj.batch(task.splits["train"][:3])
    with torch.no_grad():
        one = obj.loss(model, batch)
        two = obj.paired_loss(model, batch)
    assert two.shape == (2,)
    torch.testing.assert_close(two, torch.stack([one, one]), atol=2e-5, rtol=1e-5)


def test_paired_loss_refuses_generated_answers():
    model, tok = tiny_model("llama")
    task = get_task("disfl_qa")
    obj = make_objective(task, tok, "f1", max_length=128)
    with pytest.raises(UserError, match="paired evaluation cannot split"):
        obj.paired_loss(model, obj.batch(task.splits["train"][:2]))
