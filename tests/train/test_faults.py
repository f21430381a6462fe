"""Faults during `forwardonly train`: SIGKILL at any moment then --resume, and a full disk mid-checkpoint.

The kill test runs the committed script benchmarks/faults/kill_resume.py at small scale (3 kills; the
recorded run in benchmarks/faults/results has 20). The full-disk test writes into a real, tiny tmpfs
mounted in a private mount namespace (`unshare -m`, root or user namespaces needed; skipped elsewhere)
and, everywhere, into a file system that reports ENOSPC through an injected error.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forwardonly.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "faults" / "kill_resume.py"


@pytest.mark.integration
def test_killed_runs_resume_bitwise(tmp_path):
    out = tmp_path / "record.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--kills", "3", "--steps", "12", "--io-in", "checkpoint",
                          "--out", str(out), "--work", str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())["results"]
    assert (r["trials"], r["kills"], r["bitwise_equal"], r["corrupt_checkpoints"]) == (3, 3, 3, 0), r
    assert r["kills_inside_checkpoint_writes"] == 2  # trials 0 and 2 are io kills inside a checkpoint write
    for t in r["per_trial"]:
        assert t["resume_exit"] == 0 and t["differs"] == [] and t["resumed_from_newest"], t


def _train(ov, *extra):
    return main(["train", *ov("steps=4", "save_every=2", "log_every=1", "optim.name=zo-sgd", "optim.lr=1e-3",
                              "test=false", "validate=false"), *extra, "--no-progress"])


def test_full_disk_keeps_the_previous_checkpoint(ov, tmp_path, monkeypatch, capsys):
    """ENOSPC injected into the second checkpoint's weights file: one line naming the path, exit 1,
    the step-2 checkpoint intact and resumable."""
    import safetensors.torch

    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"\0" * 1000)  # a partial file, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    run_dir = tmp_path / "run"
    assert _train(ov, f"out_dir={run_dir}") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    ckpt = run_dir / "checkpoint"
    assert err == f"forwardonly train: error: cannot write {ckpt}: No space left on device; {ckpt} was left as it was"
    assert json.loads((ckpt / "trainer.json").read_text())["step"] == 2
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint", "config.json", "metrics.jsonl"]
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert _train(ov, f"out_dir={run_dir}", "--resume") == 0
    assert "resumed" in capsys.readouterr().err
    assert json.loads((ckpt / "trainer.json").read_text())["step"] == 4


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@pytest.mark.integration
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -m` and a tmpfs mount (root or user namespaces)")
def test_full_disk_on_a_real_file_system(ov, tmp_path):
    """A 360 KiB tmpfs holds the first checkpoint of the tiny model (~245 KB) but not a second beside it."""
    mnt, keep = tmp_path / "mnt", tmp_path / "kept"
    mnt.mkdir()
    args = " ".join(ov("steps=4", "save_every=2", "log_every=1", "optim.name=zo-sgd", "optim.lr=1e-3",
                       "test=false", "validate=false", f"out_dir={mnt}/run"))
    train = f"{sys.executable} -m forwardonly.cli.main train {args} --no-progress"
    script = f"""
        mount -t tmpfs -o size=360k tmpfs {mnt} || exit 90
        {train} > /dev/null 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc
        cp -a {mnt}/run {keep}
        mount -o remount,size=4m {mnt}
        {train} --resume > /dev/null 2> {tmp_path}/resume.err; echo $? > {tmp_path}/resume.rc
        cp {mnt}/run/checkpoint/trainer.json {tmp_path}/final.json
    """
    res = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert res.returncode == 0, res.stderr
    first_err = (tmp_path / "first.err").read_text().strip().splitlines()
    ckpt = mnt / "run" / "checkpoint"
    assert (tmp_path / "first.rc").read_text().strip() == "1"
    assert first_err[-1] == (f"forwardonly train: error: cannot write {ckpt}: No space left on device; "
                             f"{ckpt} was left as it was")
    # what the full disk left: the step-2 checkpoint, whole and loadable, and no temporary files
    assert sorted(p.name for p in keep.iterdir()) == ["checkpoint", "config.json", "metrics.jsonl"]
    from safetensors.torch import load_file

    assert json.loads((keep / "checkpoint" / "trainer.json").read_text())["step"] == 2
    assert len(load_file(str(keep / "checkpoint" / "trainable.safetensors"))) > 0
    torch.load(keep / "checkpoint" / "optimizer.pt", weights_only=True)
    assert (tmp_path / "resume.rc").read_text().strip() == "0", (tmp_path / "resume.err").read_text()
    assert f"resumed {mnt}/run at step 2" in (tmp_path / "resume.err").read_text()
    assert json.loads((tmp_path / "final.json").read_text())["step"] == 4


def test_resume_after_the_final_checkpoint(cfg_of, tmp_path):
    """Killed after its final checkpoint, before summary.json: the resumed run adds no second final
    evaluation and keeps the test score from before training."""
    import shutil

    from forwardonly.lm.train import run

    common = ("steps=4", "optim.name=zo-adam", "optim.lr=1e-3", "save_every=2", "validate=true", "test=true")
    full = run(cfg_of(*common, f"out_dir={tmp_path / 'ref'}"), progress=False)
    shutil.copytree(tmp_path / "ref", tmp_path / "c")
    (tmp_path / "c" / "summary.json").unlink()
    again = run(cfg_of(*common, f"out_dir={tmp_path / 'c'}"), resume=True, progress=False)
    assert [e["step"] for e in again["evals"]] == [e["step"] for e in full["evals"]] == [0, 4]
    assert again["test_before"] == full["test_before"]


def test_resume_without_a_checkpoint_starts_over(cfg_of, tmp_path, capsys):
    from forwardonly.lm.train import run

    s = run(cfg_of("steps=2", "test=false", "validate=false", f"out_dir={tmp_path / 'r'}"), resume=True,
            progress=False, log=lambda m: print(m, file=sys.stderr))
    assert s["step"] == 2 and "no checkpoint in" in capsys.readouterr().err
