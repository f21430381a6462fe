"""BIG-bench conversion and extraction, on a tiny fake sdist; and the QA metrics."""

import io
import json
import tarfile

import pytest

from forwardonly.errors import UserError
from forwardonly.tasks import get_task, metrics
from forwardonly.tasks.bigbench import TASKS, TASKS_DIR, convert, extract, split


def _examples(name, n):
    if name == "sentiment":
        labels = ["positive", "negative", "neutral", "ambivalent"]
        return [{"input": f"sentence {i}", "target_scores": {l: int(l == labels[i % 4]) for l in labels}}
                for i in range(n)]
    if name == "social_iqa":
        return [{"input": f"q {i}?", "target_scores": {"a": 0, "b": 1, "c": 0}} for i in range(n)]
    if name == "strategyqa":
        return [{"input": f"q {i}?", "target_scores": {"Yes": i % 2, "No": 1 - i % 2}, "target": "x"}
                for i in range(n)]
    return [{"input": f"who {i}?  \ncontext: some text {i}", "target": f"ans {i}"} for i in range(n)]


@pytest.fixture
def sdist(tmp_path):
    path = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, (member, *_rest) in TASKS.items():
            data = json.dumps({"examples": _examples(name, 1200)}).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/{TASKS_DIR}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_convert_rows():
    rows = convert("sentiment", {"examples": _examples("sentiment", 8)})
    assert [r["label"] for r in rows] == ["positive", "negative"] * 2  # neutral/ambivalent dropped
    assert convert("social_iqa", {"examples": _examples("social_iqa", 1)})[0] == \
        {"question": "q 0?", "options": ["a", "b", "c"], "answer": 1}
    assert convert("strategyqa", {"examples": _examples("strategyqa", 2)})[1]["label"] == "yes"
    assert convert("disfl_qa", {"examples": _examples("disfl_qa", 1)})[0] == \
        {"question": "who 0?", "context": "some text 0", "answers": ["ans 0"]}


def test_split_is_deterministic_and_disjoint():
    rows = [{"text": str(i)} for i in range(1000)]
    a, b = split("sentiment", rows), split("sentiment", rows)
    assert a == b and len(a["test"]) == 400 and len(a["validation"]) == 200
    seen = [r["text"] for s in a.values() for r in s]
    assert len(seen) == len(set(seen)) == 1000


def test_extract_and_load(sdist, tmp_path, monkeypatch):
    monkeypatch.setenv("FORWARDONLY_CACHE", str(tmp_path / "cache"))
    sizes = extract(sdist)
    assert sizes["sentiment"] == {"test": 400, "validation": 200, "train": 0}  # 600 pos/neg rows in the fake
    assert sizes["disfl_qa"]["train"] == 900
    task = get_task("bigbench/disfl_qa")
    assert task.kind == "qa" and len(task.splits["train"]) == 900
    assert task.splits["test"][0]["prompt"].startswith("Context: some text")


def test_extract_from_a_checkout_directory(tmp_path):
    repo = tmp_path / "BIG-bench"
    for name, (member, *_rest) in TASKS.items():
        path = repo / TASKS_DIR / member
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"examples": _examples(name, 700)}))
    sizes = extract(repo, tmp_path / "out")
    assert sizes["strategyqa"] == {"test": 400, "validation": 100, "train": 200}
    assert extract(repo / "bigbench", tmp_path / "out2") == sizes  # the checkout's bigbench/ folder works too
    assert (tmp_path / "out" / "strategyqa" / "train.jsonl").read_text().count("\n") == 200


def test_extract_says_what_can_be_fetched_without_a_source(tmp_path):
    with pytest.raises(UserError, match=r"cannot be downloaded.*--from a BIG-bench checkout.*task.data.train=FILE"):
        extract(None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_bad_source(tmp_path):
    bad = tmp_path / "bigbench-1.0.0.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(UserError, match="not a readable BIG-bench tarball"):
        extract(bad, tmp_path / "out")
    with pytest.raises(UserError, match="BIG-bench source not found"):
        extract(tmp_path / "missing.tar.gz", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"not found under bigbench/benchmark_tasks/"):
        extract(tmp_path / "empty", tmp_path / "out")
    member = tmp_path / "repo" / TASKS_DIR / TASKS["strategyqa"][0]
    member.parent.mkdir(parents=True)
    member.write_bytes(b'{"examples": [\n\xff]}')
    with pytest.raises(UserError, match=f"{member}:2: not UTF-8 text"):
        extract(tmp_path / "repo", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pred,golds,em,f1", [
    ("The Eiffel Tower!", ["eiffel tower"], 1.0, 1.0),
    ("tower", ["Eiffel Tower"], 0.0, 2 / 3),
    ("", ["unknown"], 0.0, 0.0),
    ("in 1889", ["1889", "in the year 1889"], 0.0, 0.8),  # best of 2/3 and 4/5
])
def test_squad_metrics(pred, golds, em, f1):
    assert metrics.exact_match(pred, golds) == em
    assert metrics.token_f1(pred, golds) == pytest.approx(f1)


def test_macro_f1():
    assert metrics.macro_f1([0, 0, 1, 1], [0, 1, 1, 1], 2) == pytest.approx((2 / 3 + 0.8) / 2)
