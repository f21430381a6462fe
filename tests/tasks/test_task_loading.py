"""Task specs, shipped subsets, user data files, and bad-input errors naming file and line."""

import json

import pytest

from forwardonly.errors import UserError
from forwardonly.tasks import builtin_names, get_task

SHIPPED = {  # name: (kind, train, validation, test)
    "sentiment": ("classification", 1200, 200, 400),
    "social_iqa": ("multiple_choice", 600, 100, 400),
    "strategyqa": ("yes_no", 600, 100, 400),
    "disfl_qa": ("qa", 300, 100, 200),
}


def test_builtin_names():
    assert builtin_names() == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_tasks_load(name):
    task = get_task(name)
    kind, *sizes = SHIPPED[name]
    assert task.kind == kind
    assert [len(task.splits[s]) for s in ("train", "validation", "test")] == sizes
    ex = task.splits["test"][0]
    assert ex["prompt"] and ex["where"].endswith(f"{name}.test.jsonl:1")
    if kind == "qa":
        assert ex["answers"] and all(isinstance(a, str) for a in ex["answers"])
    else:
        assert 0 <= ex["target"] < len(ex["choices"])


def test_shipped_splits_do_not_overlap():
    task = get_task("sentiment")
    texts = {s: {ex["text"] for ex in task.splits[s]} for s in task.splits}
    assert not texts["train"] & texts["test"] and not texts["validation"] & texts["test"]


def test_sentiment_template():
    ex = get_task("sentiment").splits["test"][0]
    assert ex["prompt"] == f"Review: {ex['text']}\nSentiment:"
    assert ex["choices"] == [" negative", " positive"]
    assert ex["choices"][ex["target"]] == " " + ex["label"]


def test_overrides_change_template():
    task = get_task("sentiment", prompt="Text: {text}\nFeeling:", labels={"negative": " bad", "positive": " good"})
    ex = task.splits["train"][0]
    assert ex["prompt"].startswith("Text: ") and ex["choices"] == [" bad", " good"]


def test_unknown_override_rejected():
    with pytest.raises(UserError, match="unknown key 'colour'"):
        get_task("sentiment", colour="blue")


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_user_jsonl_with_yaml(tmp_path):
    _write(tmp_path / "train.jsonl", [{"q": f"is {i} even?", "a": i % 2 == 0} for i in range(10)])
    _write(tmp_path / "test.jsonl", [{"q": "is 3 even?", "a": False}])
    (tmp_path / "task.yaml").write_text(
        "name: parity\nkind: yes_no\ndata: {train: train.jsonl, test: test.jsonl}\n"
        "template:\n  prompt: \"Q: {q}\\nA:\"\n  label_field: a\n")
    task = get_task(str(tmp_path / "task.yaml"))
    ex = task.splits["test"][0]
    assert task.name == "parity" and ex["prompt"] == "Q: is 3 even?\nA:"
    assert ex["choices"] == [" Yes", " No"] and ex["target"] == 1


def test_user_csv_file(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("sentence,label\n" + "".join(f"text number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20)))
    task = get_task(str(path), prompt="{sentence} It was", labels={"neg": " bad", "pos": " good"})
    assert task.name == "reviews" and sum(len(v) for v in task.splits.values()) == 20
    assert len(task.splits["test"]) == 2 and task.splits["test"][0]["where"].startswith(str(path) + ":")


def test_user_parquet_multiple_choice(tmp_path):
    import datasets

    rows = [{"stem": f"pick {i}", "opts": ["red", "green", "blue"], "gold": i % 3} for i in range(10)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "mc.parquet"))
    task = get_task(str(tmp_path / "mc.parquet"), kind="multiple_choice", prompt="{stem}:",
                    options_field="opts", answer_field="gold")
    ex = task.splits["train"][0]
    assert ex["choices"] == [" red", " green", " blue"]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"text": "ok", "label": "positive"}, "{not json", ])
    with pytest.raises(UserError, match=rf"{path}:2: malformed JSON"):
        get_task(str(path), labels={"negative": " negative", "positive": " positive"})


@pytest.mark.parametrize("rows,overrides,msg", [
    ([{"text": "a", "label": "positive"}, {"txt": "b", "label": "negative"}], {},
     r"d.jsonl:2: template prompt references field 'text'"),
    ([{"text": "a", "label": "positive"}, {"text": "b", "label": "meh"}], {},
     r"d.jsonl:2: label 'meh' is not one of"),
    ([{"text": "a"}], {}, r"d.jsonl:1: row has no label field 'label'"),
    ([{"q": "a", "options": ["x", "y"], "answer": 2}], {"kind": "multiple_choice", "prompt": "{q}"},
     r"d.jsonl:1: answer 2 in field 'answer' is not an option index"),
    ([{"q": "a", "options": "x"}], {"kind": "multiple_choice", "prompt": "{q}"},
     r"d.jsonl:1: field 'options' must be a list"),
    ([{"q": "a", "answers": []}], {"kind": "qa", "prompt": "{q}"}, r"d.jsonl:1: field 'answers' must be"),
    (["[1, 2]"], {}, r"d.jsonl:1: a row must be a JSON object"),
])
def test_bad_rows_name_file_and_line(tmp_path, rows, overrides, msg):
    path = _write(tmp_path / "d.jsonl", rows)
    overrides.setdefault("labels", {"negative": " negative", "positive": " positive"})
    with pytest.raises(UserError, match=msg) as e:
        get_task(str(path), **overrides)
    assert "\n" not in str(e.value)


def test_bad_yaml_value_names_line(tmp_path):
    _write(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}])
    (tmp_path / "task.yaml").write_text("name: t\nkind: regression\ndata: {test: t.jsonl}\n")
    with pytest.raises(UserError, match=r"task.yaml:2: kind='regression' is not one of"):
        get_task(str(tmp_path / "task.yaml"))


def test_bad_task_errors(tmp_path):
    with pytest.raises(UserError, match="unknown task 'sentimnet'"):
        get_task("sentimnet")
    with pytest.raises(UserError, match="data file not found"):
        (tmp_path / "t.yaml").write_text("name: t\ndata: {test: missing.jsonl}\ntemplate: {labels: {a: ' a', b: ' b'}}\n")
        get_task(str(tmp_path / "t.yaml"))
    with pytest.raises(UserError, match="needs template.labels"):
        _write(tmp_path / "x.jsonl", [{"text": "a", "label": "x"}])
        get_task(str(tmp_path / "x.jsonl"))
    with pytest.raises(UserError, match="max_new_tokens=0"):
        get_task("disfl_qa", max_new_tokens=0)


def test_bigbench_full_task_missing_suggests_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("FORWARDONLY_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="forwardonly data fetch bigbench"):
        get_task("bigbench/sentiment")
