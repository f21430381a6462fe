"""Corrupted files of every kind the command line reads, through the command line in processes of its
own: weights, data files, configs, checkpoints, seed logs, run and model directories.

Each case must exit with status 2, end in one line that names the file (and the line where there is
one), print no traceback, and leave every file it was given exactly as it was (nothing created either).

Importing torch, transformers and datasets costs seconds of CPU a process, so one driver process
imports them once and forks a child per case; the child runs the command line's ``main`` with the
case's arguments, working directory and environment, and its exit status and stderr are the case's
(an uncaught exception prints its traceback and exits 1, as the ``forwardonly`` script would). A few
cases also run the ``forwardonly`` entry point from a fresh interpreter.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["task.max_train=8", "task.max_eval=4", "task.max_test=4", "batch_size=4", "threads=1", "--no-progress"]


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_dir):
    """A tiny model directory, a finished 2-step ZO run, a finished local run, good data files."""
    from forwardonly.cli.main import main

    root = tmp_path_factory.mktemp("made")
    shutil.copytree(tiny_dir, root / "tiny")
    assert main(["train", f"model.name={root / 'tiny'}", "steps=2", f"out_dir={root / 'run'}", *FAST]) == 0
    assert main(["local", "train", "--algo", "mf", "--data", "digits", "hidden=[8]", "epochs=1",
                 f"out_dir={root / 'local'}", "--no-progress"]) == 0
    (root / "good.jsonl").write_text('{"text": "good movie", "label": "pos"}\n' * 12)
    import pandas as pd

    pd.DataFrame({"text": ["good movie"] * 40, "label": ["pos"] * 40}).to_parquet(root / "good.parquet")
    return root


def _copy(made, case, name):
    src = made / name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, case / name)
    return case / name


def _truncate(path, keep=None):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2 if keep is None else keep])
    return path


def _lm(made, *extra):
    return ["eval", f"model.name={made / 'tiny'}", *FAST, *extra]


def weights_truncated(made, case):
    _truncate(_copy(made, case, "tiny") / "model.safetensors")
    return ["eval", f"model.name={case / 'tiny'}", *FAST], "tiny/model.safetensors"


def model_config_not_utf8(made, case):
    (_copy(made, case, "tiny") / "config.json").write_bytes(b'{\n  "model_type": "ll\xffama"\n}\n')
    return ["eval", f"model.name={case / 'tiny'}", *FAST], "tiny/config.json:2"


def tokenizer_truncated(made, case):
    _truncate(_copy(made, case, "tiny") / "tokenizer.json")
    return ["eval", f"model.name={case / 'tiny'}", *FAST], "tiny/tokenizer.json:"


def gguf_garbage(made, case):
    (case / "m.gguf").write_bytes(b"GGUF" + bytes(range(60)))
    return ["eval", f"model.name={case / 'm.gguf'}", *FAST], "m.gguf"


def jsonl_truncated(made, case):
    (case / "d.jsonl").write_text('{"text": "a", "label": "pos"}\n{"text": "b", "lab')
    return _lm(made, f"task.name={case / 'd.jsonl'}", "task.template.labels=pos,neg"), "d.jsonl:2"


def jsonl_not_utf8(made, case):
    (case / "d.jsonl").write_bytes(b'{"text": "a", "label": "pos"}\n{"text": "\xff", "label": "pos"}\n')
    return _lm(made, f"task.name={case / 'd.jsonl'}", "task.template.labels=pos,neg"), "d.jsonl:2"


def csv_not_utf8(made, case):
    (case / "d.csv").write_bytes(b"text,label\na,pos\nb,pos\n\xe9,neg\n")
    return _lm(made, f"task.name={case / 'd.csv'}", "task.template.labels=pos,neg"), "d.csv:4"


def csv_truncated(made, case):
    (case / "d.csv").write_text('text,label\na,pos\n"b,neg\n')
    return _lm(made, f"task.name={case / 'd.csv'}", "task.template.labels=pos,neg"), "d.csv"


def parquet_truncated(made, case):
    _truncate(_copy(made, case, "good.parquet"))
    return _lm(made, f"task.name={case / 'good.parquet'}", "task.template.labels=pos,neg"), "good.parquet"


def task_yaml_not_utf8(made, case):
    (case / "t.yaml").write_bytes(b"name: t\nkind: classification\ntemplate: {prompt: \"\xff\"}\n")
    return _lm(made, f"task.name={case / 't.yaml'}"), "t.yaml:3"


def task_data_file_truncated(made, case):
    _truncate(_copy(made, case, "good.jsonl"), keep=50)
    return _lm(made, "task.name=r", f"task.data.test={case / 'good.jsonl'}", "task.template.labels=pos,neg"), \
        "good.jsonl:2"


def train_config_truncated(made, case):
    (case / "c.yaml").write_text("steps: 3\noptim: {name: zo-sgd, lr: 1e")
    return ["train", "--config", str(case / "c.yaml"), f"out_dir={case / 'out'}"], "c.yaml:2"


def train_config_invalid_value(made, case):
    (case / "c.yaml").write_text("steps: 3\noptim:\n  name: zo-sgd\n  lr: -1\n")
    return ["train", "--config", str(case / "c.yaml"), f"out_dir={case / 'out'}"], "c.yaml:4"


def train_config_not_utf8(made, case):
    (case / "c.yaml").write_bytes(b"steps: 3\n# caf\xe9\n")
    return ["train", "--config", str(case / "c.yaml"), f"out_dir={case / 'out'}"], "c.yaml:2"


def local_config_not_utf8(made, case):
    (case / "c.yaml").write_bytes(b"algo: mf\ndata: digits\n\xff: 1\n")
    return ["local", "train", "--config", str(case / "c.yaml"), f"out_dir={case / 'out'}"], "c.yaml:3"


def _resume(made, case, member, keep=None, data=None):
    run = _copy(made, case, "run")
    if data is not None:
        (run / member).write_bytes(data)
    else:
        _truncate(run / member, keep)
    return ["train", f"model.name={made / 'tiny'}", "steps=3", f"out_dir={run}", "--resume", *FAST], f"run/{member}"


def checkpoint_weights_truncated(made, case):
    return _resume(made, case, "checkpoint/trainable.safetensors")


def checkpoint_optimizer_truncated(made, case):
    return _resume(made, case, "checkpoint/optimizer.pt")


def checkpoint_trainer_json_truncated(made, case):
    return _resume(made, case, "checkpoint/trainer.json", keep=40)


def checkpoint_seedlog_not_utf8(made, case):
    return _resume(made, case, "checkpoint/seedlog.json", data=b'{"format": 1,\n"entries": "\xff"}')


def metrics_log_corrupt(made, case):
    argv, _ = _resume(made, case, "metrics.jsonl", data=b'{"step": 2, "loss": 0.5}\n{"step": 3, "lo\n')
    return argv, "run/metrics.jsonl:2"


def run_config_truncated(made, case):
    run = _copy(made, case, "run")
    _truncate(run / "config.json", keep=30)
    return ["eval", "--run", str(run), *FAST], "run/config.json:"


def run_weights_truncated(made, case):
    run = _copy(made, case, "run")
    _truncate(run / "checkpoint" / "trainable.safetensors")
    return ["eval", "--run", str(run), *FAST], "run/checkpoint/trainable.safetensors"


def seedlog_truncated(made, case):
    run = _copy(made, case, "run")
    _truncate(run / "seedlog.json")
    return ["eval", "--seedlog", str(run / "seedlog.json"), *FAST], "run/seedlog.json:1"


def seedlog_not_utf8(made, case):
    (case / "s.json").write_bytes(b'{"format": 1,\n "model": "\xff"}\n')
    return ["eval", "--seedlog", str(case / "s.json"), *FAST], "s.json:2"


def seedlog_wrong_shape(made, case):
    (case / "s.json").write_text('{"format": 1, "entries": []}\n')
    return ["eval", "--seedlog", str(case / "s.json"), *FAST], "s.json"


def local_checkpoint_state_truncated(made, case):
    run = _copy(made, case, "local")
    _truncate(run / "checkpoint" / "state.pt")
    return ["local", "eval", str(run)], "local/checkpoint/state.pt"


def local_checkpoint_weights_truncated(made, case):
    run = _copy(made, case, "local")
    _truncate(run / "checkpoint" / "best.safetensors")
    return ["local", "eval", str(run)], "local/checkpoint/best.safetensors"


def local_resume_truncated(made, case):
    run = _copy(made, case, "local")
    _truncate(run / "checkpoint" / "model.safetensors")
    return ["local", "train", "--algo", "mf", "--data", "digits", "hidden=[8]", "epochs=2", f"out_dir={run}",
            "--resume"], "local/checkpoint/model.safetensors"


def local_mnist_csv_corrupt(made, case):
    (case / "mnist").mkdir()
    for name in ("mnist_train.csv", "mnist_test.csv"):
        (case / "mnist" / name).write_bytes(b"label,p1\n3,12\n4,\xff\n")
    return ["local", "train", "--algo", "mf", "--data", "mnist", "--data-dir", str(case / "mnist")], \
        "mnist/mnist_train.csv"


def report_result_truncated(made, case):
    (case / "results").mkdir()
    (case / "results" / "r.json").write_text('{"kind": "train",\n "acc')
    return ["report", str(case / "results"), "--strict", "--no-plots"], "results/r.json"


CASES = [weights_truncated, model_config_not_utf8, tokenizer_truncated, gguf_garbage, jsonl_truncated,
         jsonl_not_utf8, csv_not_utf8, csv_truncated, parquet_truncated, task_yaml_not_utf8,
         task_data_file_truncated, train_config_truncated, train_config_invalid_value, train_config_not_utf8,
         local_config_not_utf8,
         checkpoint_weights_truncated, checkpoint_optimizer_truncated, checkpoint_trainer_json_truncated,
         checkpoint_seedlog_not_utf8, metrics_log_corrupt, run_config_truncated, run_weights_truncated,
         seedlog_truncated, seedlog_not_utf8, seedlog_wrong_shape, local_checkpoint_state_truncated,
         local_checkpoint_weights_truncated, local_resume_truncated, local_mnist_csv_corrupt,
         report_result_truncated]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


DRIVER = r"""
import json, os, sys, traceback
from forwardonly.cli.main import main
import datasets, peft, torch, transformers  # noqa: F401 - imported once, before forking
cases = json.load(open(sys.argv[1]))
codes = []
for c in cases:
    pid = os.fork()
    if pid == 0:
        os.chdir(c["cwd"])
        os.environ.update(c["env"])
        os.dup2(os.open(c["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        try:
            code = main(c["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
json.dump(codes, open(sys.argv[2], "w"))
"""


def _env(cache):
    return {"PYTHONPATH": str(SRC), "FORWARDONLY_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def outcomes(made, tmp_path_factory):
    """Every case set up in its own directory, then run by the forking driver: {name: (work, names, snap, rc, err)}."""
    root = tmp_path_factory.mktemp("cases")
    cases, meta = [], {}
    for case in CASES:
        work = root / case.__name__
        work.mkdir()
        argv, names = case(made, work)
        meta[case.__name__] = (work, names, _snapshot(work))
        cases.append({"argv": argv, "cwd": str(work), "env": _env(root / "cache"),
                      "stderr": str(root / f"{case.__name__}.err")})
    (root / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, "-c", DRIVER, str(root / "cases.json"), str(root / "codes.json")], check=True,
                   env={**os.environ, **_env(root / "cache")}, timeout=1200)
    codes = json.loads((root / "codes.json").read_text())
    return {name: (*meta[name], code, Path(c["stderr"]).read_text())
            for name, code, c in zip(meta, codes, cases)}


def _check(rc, err, names):
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err and lines, err[-2000:]
    assert lines[-1].startswith("forwardonly ") and ": error: " in lines[-1], lines[-1]
    assert names in lines[-1], lines[-1]


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
def test_corrupt_file_is_one_line_exit_2_nothing_overwritten(outcomes, case):
    work, names, before, rc, err = outcomes[case.__name__]
    _check(rc, err, names)
    assert _snapshot(work) == before  # nothing overwritten, nothing created


@pytest.mark.parametrize("case", [jsonl_not_utf8, checkpoint_optimizer_truncated], ids=lambda f: f.__name__)
def test_the_forwardonly_entry_point_itself(made, tmp_path, case):
    work = tmp_path / "case"
    work.mkdir()
    argv, names = case(made, work)
    before = _snapshot(work)
    r = subprocess.run([sys.executable, "-m", "forwardonly.cli.main", *argv], capture_output=True, text=True,
                       env={**os.environ, **_env(tmp_path / "cache")}, cwd=work, timeout=300, check=False)
    _check(r.returncode, r.stderr, names)
    assert _snapshot(work) == before
