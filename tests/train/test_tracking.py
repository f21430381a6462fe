"""Tracking: metrics.jsonl with evaluation rows, report_to TensorBoard / W&B (offline) / MLflow (local store)
read back through each library, missing extras in one line, and --quiet / --verbose."""

import json
import struct
import sys

import pytest

from forwardonly.cli.main import main
from forwardonly.errors import MissingExtra
from forwardonly.lm.train import run

pytestmark = pytest.mark.integration


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _wandb_history(run_dir) -> list[dict]:
    """The history rows of an offline W&B run, read from its ``.wandb`` file: a LevelDB-style log of 32 KiB
    blocks whose records (7-byte header: checksum, length, type) hold ``wandb_internal_pb2.Record``s."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, buf, rows = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # full/first start a record, middle/last continue it
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
    return rows


def test_evaluation_rows_reach_metrics_jsonl(cfg_of, tmp_path):
    out = tmp_path / "run"
    s = run(cfg_of("steps=4", "eval_every=2", "log_every=2", "optim.lr=1e-3", f"out_dir={out}"),
            progress=False)
    rows = _rows(out)
    evals = [(r["step"], r["split"]) for r in rows if "split" in r]
    assert evals == [(0, "test"), (0, "validation"), (2, "validation"), (4, "validation"), (4, "test")]
    train = [r for r in rows if "split" not in r]
    assert [r["step"] for r in train] == [2, 4] and all("projected_grad" in r and "loss" in r for r in train)
    last_test = [r for r in rows if r.get("split") == "test"][-1]
    assert last_test["accuracy"] == s["test_after"]["accuracy"]
    assert last_test["forwards"] == s["forwards"] == 8
    valid = [r["accuracy"] for r in rows if r.get("split") == "validation"]
    assert valid == [e["accuracy"] for e in s["evals"]]


def test_report_to_every_backend_through_its_own_library(cfg_of, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    run(cfg_of("steps=4", "log_every=2", "optim.lr=1e-3", "test=false", f"out_dir={out}",
               "report_to=tensorboard,wandb,mlflow"), progress=False)
    train = [r for r in _rows(out) if "split" not in r]
    valid = [r for r in _rows(out) if r.get("split") == "validation"]
    want_loss = [(r["step"], r["loss"]) for r in train]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(out / "tensorboard"))
    tb.Reload()
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in tb.Scalars("train/loss")] == want_loss
    assert [e.step for e in tb.Scalars("validation/accuracy")] == [r["step"] for r in valid]

    history = _wandb_history(out)
    assert [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h] == want_loss
    got = [h["validation/accuracy"] for h in history if "validation/accuracy" in h]
    assert got == [r["accuracy"] for r in valid]

    from mlflow.tracking import MlflowClient

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("forwardonly").experiment_id])
    assert found.data.params["optim.lr"] == "0.001" and found.info.status == "FINISHED"
    got = client.get_metric_history(found.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in got] == want_loss


@pytest.mark.parametrize("backend", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_tracking_library_is_one_line_naming_its_extra(ov, tmp_path, capsys, monkeypatch, backend):
    monkeypatch.setitem(sys.modules, backend, None)  # import fails as if it were not installed
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *ov("steps=1", f"out_dir={out}", f"report_to={backend}")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"forwardonly train: error: report_to={backend} needs {backend}: "
        f"pip install 'forwardonly[{backend}]'"]
    assert not out.exists()  # stopped before writing anything
    with pytest.raises(MissingExtra):
        from forwardonly.tracking import check_backends

        check_backends([backend])


@pytest.mark.parametrize("extra,msg", [("report_to=neptune", "report_to='neptune' is not one of"),
                                       ("report_to=tensorboard", "report_to=tensorboard needs out_dir")])
def test_bad_report_to_is_named(ov, capsys, extra, msg):
    assert main(["train", *ov("steps=1", extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_quiet_and_verbose(ov, tmp_path, capsys):
    assert main(["train", "--no-progress", *ov("steps=1", "validate=false", "test=false")]) == 0
    assert "loading" in capsys.readouterr().err
    assert main(["train", "--quiet", *ov("steps=1", "validate=false", "test=false")]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)["step"] == 1  # results still on stdout
    assert main(["--quiet", "train", *ov("steps=1", "validate=false", "test=false")]) == 0
    assert capsys.readouterr().err == ""
    assert main(["train", "-v", "--no-progress", *ov("steps=1", "validate=false", "test=false")]) == 0
    assert "loading" in capsys.readouterr().err
