"""Records pin the code (commit, diff, untracked files) and the command, and are never overwritten;
generated README blocks are replaced and checked by name."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from forwardonly.bench import blocks, record
from forwardonly.errors import UserError


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    (r / "benchmarks" / "suite" / "results").mkdir(parents=True)
    git(r, "init", "-q")
    git(r, "config", "user.email", "t@example.org")
    git(r, "config", "user.name", "t")
    (r / "code.py").write_text("x = 1\n")
    (r / ".gitignore").write_text("*.log\n")
    git(r, "add", ".")
    git(r, "commit", "-qm", "first")
    return r


def test_a_clean_tree_is_pinned_by_its_commit_alone(repo):
    state = record.git_state(repo)
    assert state["dirty"] is False and len(state["commit"]) == 40 and "diff" not in state


def test_a_dirty_tree_stores_its_diff_and_untracked_files_but_not_result_data(repo):
    (repo / "code.py").write_text("x = 2\n")
    (repo / "new.py").write_text("y = 3\n")
    (repo / "big.bin").write_bytes(b"\0" * (record.UNTRACKED_TEXT_LIMIT + 1))
    (repo / "run.log").write_text("ignored\n")
    (repo / "benchmarks" / "suite" / "results" / "r.json").write_text("{}")  # data a run writes: not code
    state = record.git_state(repo)
    assert state["dirty"] is True
    assert "-x = 1\n+x = 2\n" in state["diff"]
    assert state["diff_sha256"] == hashlib.sha256(state["diff"].encode()).hexdigest()
    files = {f["path"]: f for f in state["untracked"]}
    assert set(files) == {"new.py", "big.bin"}  # the ignored log and the result record are left out
    assert files["new.py"]["content"] == "y = 3\n" and files["new.py"]["bytes"] == 6
    assert "content" not in files["big.bin"]
    assert files["big.bin"]["sha256"] == hashlib.sha256(b"\0" * (record.UNTRACKED_TEXT_LIMIT + 1)).hexdigest()
    # the stored diff restores the tree: applied to the commit it gives the edited file back
    git(repo, "stash", "-q")
    subprocess.run(["git", "-C", str(repo), "apply"], input=state["diff"], text=True, check=True)
    assert (repo / "code.py").read_text() == "x = 2\n"


def test_only_result_data_changed_is_not_dirty(repo):
    (repo / "benchmarks" / "suite" / "results" / "r.json").write_text("{}")
    (repo / "benchmarks" / "suite" / "screens" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "suite" / "screens" / "results" / "s.json").write_text("{}")  # a screen's record
    assert record.git_state(repo)["dirty"] is False
    (repo / "benchmarks" / "suite" / "screens" / "s.yaml").write_text("a: 1\n")  # a screen file is code
    assert record.git_state(repo)["dirty"] is True


def test_outside_a_repository_nothing_is_claimed(tmp_path):
    assert record.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_the_command_names_argv_cwd_and_the_environment_that_matters(monkeypatch):
    monkeypatch.setenv("FORWARDONLY_NATIVE", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    monkeypatch.setenv("SOME_OTHER_VARIABLE", "x")
    cmd = record.command_info(["run.py", "--shape", "1x64"])
    assert cmd["argv"] == ["run.py", "--shape", "1x64"] and cmd["cwd"] and cmd["python"]
    assert cmd["env"]["FORWARDONLY_NATIVE"] == "0" and cmd["env"]["OMP_NUM_THREADS"] == "1"
    assert cmd["env"]["MKL_NUM_THREADS"] == "2" and "SOME_OTHER_VARIABLE" not in cmd["env"]


def test_a_record_is_never_overwritten(tmp_path):
    path = tmp_path / "results" / "a.json"
    record.write_record(path, {"results": {"v": 1}})
    with pytest.raises(UserError, match="a record already exists there; records are never overwritten"):
        record.write_record(path, {"results": {"v": 2}})
    assert json.loads(path.read_text()) == {"results": {"v": 1}}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary file left behind
    with pytest.raises(UserError, match="a.json: a record already exists"):
        record.refuse_existing(path)
    record.refuse_existing(tmp_path / "results" / "b.json")


def test_each_invocation_gets_a_new_file(tmp_path):
    paths = []
    for i in range(3):  # within one second: suffixes keep them apart
        paths.append(record.write_record(record.new_record_path(tmp_path, "cpu_1x64"), {"i": i}))
    assert len(set(paths)) == 3 and all(p.name.startswith("cpu_1x64.") and p.suffix == ".json" for p in paths)
    assert [json.loads(p.read_text())["i"] for p in paths] == [0, 1, 2]


def test_make_record_carries_command_code_and_machine():
    rec = record.make_record("suite/x", {"lr": 1}, {"acc": 0.5}, command={"argv": ["x"]}, seed=3)
    assert rec["command"] == {"argv": ["x"]} and rec["seed"] == 3 and rec["results"] == {"acc": 0.5}
    assert {"git", "versions", "machine", "created"} <= set(rec)


def test_record_set_notes_the_records_a_table_used(tmp_path):
    (tmp_path / "results" / "v1").mkdir(parents=True)
    for name in ("results/a.json", "results/v1/b.json", "results/v1/c.json"):
        (tmp_path / name).write_text(json.dumps({"name": name}))
    rs = record.RecordSet(tmp_path)
    assert [r["name"] for r in rs.glob("results/v1/*.json")] == ["results/v1/b.json", "results/v1/c.json"]
    assert rs.get("results/missing.json") is None and len(rs.used) == 2
    (tmp_path / "results" / "bad.json").write_text("{")
    with pytest.raises(UserError, match="bad.json: not a readable record"):
        rs.get("results/bad.json")


def test_a_record_that_pins_its_code_supersedes_the_legacy_ones_where_asked(tmp_path):
    (tmp_path / "results").mkdir()
    legacy = {"git": {"commit": "a" * 40, "dirty": True}}  # dirty, no diff: does not pin its code
    files = {"results/x.json": legacy, "results/x.2026.json": {"git": {"commit": "b" * 40, "dirty": False}},
             "results/x.2027.json": {"git": {"commit": "c" * 40, "dirty": True, "diff": "+y"}},
             "results/y.json": legacy, "results/z.json": {"git": {"commit": None, "dirty": None}}}
    for name, rec in files.items():
        (tmp_path / name).write_text(json.dumps({**rec, "name": name}))
    assert [record.pins_code(json.loads((tmp_path / n).read_text())) for n in files] == [False, True, True, False, False]
    rs = record.RecordSet(tmp_path)
    both = ("results/x.json", "results/x.*.json")
    assert [r["name"] for r in rs.glob(*both)] == ["results/x.json", "results/x.2026.json", "results/x.2027.json"]
    rs = record.RecordSet(tmp_path)
    assert [r["name"] for r in rs.glob(*both, prefer_pinned=True)] == ["results/x.2026.json", "results/x.2027.json"]
    assert [r["name"] for r in rs.glob("results/y*.json", prefer_pinned=True)] == ["results/y.json"]  # nothing better
    assert sorted(Path(p).name for p in rs.used) == ["x.2026.json", "x.2027.json", "y.json"]  # x.json not cited


def test_generated_blocks_are_replaced_and_checked_by_name(tmp_path):
    text = "# T\n<!-- generated:a -->\nold\n<!-- /generated:a -->\nprose 1.5x\n<!-- generated:b -->\n<!-- /generated:b -->\n"
    assert blocks.blocks(text) == {"a": "old", "b": ""}
    new = blocks.replace_block(blocks.replace_block(text, "a", "| new |"), "b", "x\ny")
    assert new == "# T\n<!-- generated:a -->\n| new |\n<!-- /generated:a -->\nprose 1.5x\n" \
                  "<!-- generated:b -->\nx\ny\n<!-- /generated:b -->\n"
    readme = tmp_path / "README.md"
    readme.write_text(new)
    assert blocks.stale_blocks(readme, {"a": "| new |", "b": "x\ny"}) == []
    problems = blocks.stale_blocks(readme, {"a": "| newer |", "c": "z"})
    assert len(problems) == 3 and "block 'a' differs" in problems[1] and "+| newer |" in problems[1]
    assert "block 'b' is not generated" in problems[0] and "no generated block 'c'" in problems[2]
    with pytest.raises(UserError, match="README.md:2: generated block 'a' has no"):
        blocks.blocks("x\n<!-- generated:a -->\nno end\n", "README.md")
