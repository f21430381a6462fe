"""Your own data: template and labels from config keys, dataset directories, datasets names, the
validation cut, and the sft kind's rows (no model needed here; see tests/train/test_own_data_cli.py)."""

import json

import pytest

from forwardonly.config import load_config
from forwardonly.errors import UserError
from forwardonly.lm.config import TaskConfig, TrainConfig
from forwardonly.tasks import get_task, task_for_run


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reviews(n, offset=0):
    return [{"text": f"review {i}", "label": ["neg", "pos"][i % 2]} for i in range(offset, offset + n)]


def _task_cfg(*overrides):
    return load_config(TrainConfig, None, list(overrides)).task


def test_template_and_labels_from_config_keys(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _reviews(20))
    tc = _task_cfg("task.name=reviews", f"task.data.train={train}", "task.template.prompt={text} ->",
                   "task.template.labels=neg,pos")
    task = task_for_run(tc, ["train"])
    ex = task.splits["train"][0]
    assert task.name == "reviews" and task.kind == "classification" and list(task.splits) == ["train"]
    assert ex["prompt"] == "review 0 ->" and ex["choices"] == [" neg", " pos"] and ex["target"] == 0
    assert ex["where"] == f"{train}:1"


def test_labels_as_a_mapping_from_the_command_line(tmp_path):
    train = _jsonl(tmp_path / "t.jsonl", _reviews(4))
    tc = _task_cfg(f"task.data.train={train}", "task.name=r", "task.template.labels={neg: ' bad', pos: ' good'}")
    assert task_for_run(tc, ["train"]).splits["train"][1]["choices"] == [" bad", " good"]


def test_data_replaces_the_builtin_files_and_keeps_its_template(tmp_path):
    test = _jsonl(tmp_path / "test.jsonl", [{"text": "fine", "label": "positive"}])
    task = task_for_run(_task_cfg(f"task.data.test={test}"), ["test"])
    assert list(task.splits) == ["test"] and task.splits["test"][0]["prompt"] == "Review: fine\nSentiment:"


def test_only_the_used_splits_are_required(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _reviews(10))
    tc = _task_cfg("task.name=r", f"task.data.train={train}", "task.template.labels=neg,pos")
    task_for_run(tc, ["train"])  # no validation or test split needed
    with pytest.raises(UserError, match=r"no split 'test'.*task.data.test=FILE or skip it with test=false"):
        task_for_run(tc, ["train", "test"])


def test_missing_validation_is_cut_from_train_seeded_and_recorded(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _reviews(40))
    base = ("task.name=r", f"task.data.train={train}", "task.template.labels=neg,pos")
    a = task_for_run(_task_cfg(*base), ["train", "validation"])
    b = task_for_run(_task_cfg(*base), ["train", "validation"])
    c = task_for_run(_task_cfg(*base, "task.split_seed=1", "task.val_fraction=0.25"), ["train", "validation"])
    assert a.notes == {"validation": {"cut_from": "train", "fraction": 0.1, "seed": 0, "n": 4}}
    assert [e["text"] for e in a.splits["validation"]] == [e["text"] for e in b.splits["validation"]]
    assert len(c.splits["validation"]) == 10 and len(c.splits["train"]) == 30
    texts = {s: {e["text"] for e in a.splits[s]} for s in a.splits}
    assert not texts["train"] & texts["validation"] and len(texts["train"] | texts["validation"]) == 40
    assert [e["text"] for e in c.splits["validation"]] != [e["text"] for e in a.splits["validation"]][:10]


def test_config_rejects_unknown_template_key_and_split():
    with pytest.raises(UserError, match="unknown key 'task.template.promt'.*task.template.prompt"):
        _task_cfg("task.template.promt=x")
    with pytest.raises(UserError, match="task.data.valid: unknown split"):
        _task_cfg("task.data.valid=x.jsonl")
    with pytest.raises(UserError, match="task.val_fraction=1.5"):
        _task_cfg("task.val_fraction=1.5")


def test_dataset_saved_to_disk(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(_reviews(12)),
                               "test": datasets.Dataset.from_list(_reviews(3, 100))})
    dd.save_to_disk(str(tmp_path / "dd"))
    task = get_task(str(tmp_path / "dd"), labels=["neg", "pos"])
    assert sorted(task.splits) == ["test", "train"] and len(task.splits["test"]) == 3
    assert task.splits["test"][0]["text"] == "review 100" and task.splits["test"][0]["where"].endswith("[test] row 1")
    datasets.Dataset.from_list(_reviews(30)).save_to_disk(str(tmp_path / "one"))  # no named splits: 80/10/10
    one = get_task(str(tmp_path / "one"), labels=["neg", "pos"])
    assert [len(one.splits[s]) for s in ("train", "validation", "test")] == [24, 3, 3]


def test_datasets_json_builder_with_local_files(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _reviews(6))
    test = _jsonl(tmp_path / "test.jsonl", _reviews(2, 50))
    tc = _task_cfg("task.name=json", f"task.data.train={train}", f"task.data.test={test}",
                   "task.template.labels=neg,pos")
    task = task_for_run(tc, ["train", "test"])
    assert len(task.splits["train"]) == 6 and task.splits["test"][1]["text"] == "review 51"
    assert task.splits["train"][0]["where"] == "json[train] row 1"


def test_unknown_datasets_name_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="unknown task 'no-such-org/no-such-set'") as e:
        get_task("no-such-org/no-such-set")
    assert "\n" not in str(e.value)


def test_sft_rows_prompt_completion_and_chat(tmp_path):
    path = _jsonl(tmp_path / "sft.jsonl", [
        {"prompt": "2+2=", "completion": " 4", "answer": "4"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "answer": "hello"},
    ])
    task = get_task(str(path), kind="sft", reference_field="answer")
    rows = sorted((e for s in task.splits.values() for e in s), key=lambda e: e["where"])
    assert rows[0]["prompt"] == "2+2=" and rows[0]["completion"] == " 4" and rows[0]["answers"] == ["4"]
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "hello"} and rows[1]["completion"] == "hello"


@pytest.mark.parametrize("row,match", [
    ({"prompt": "x"}, "row has no completion"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "ending with the assistant"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}, "ending with"),
])
def test_bad_sft_rows_name_file_and_line(tmp_path, row, match):
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, row])
    with pytest.raises(UserError, match=match) as e:
        get_task(str(path), kind="sft", seed=0)
    assert f"{path}:2" in str(e.value)


def test_task_config_defaults_keep_builtin_behaviour():
    tc = TaskConfig()
    task = task_for_run(tc, ["train", "validation", "test"])
    assert task.notes == {} and [len(task.splits[s]) for s in ("train", "validation", "test")] == [1200, 200, 400]
