"""Experiment tracking: a run's metric rows sent to TensorBoard, Weights & Biases and MLflow.

Each backend goes through its own library, installed as an extra and imported
only when asked for (``pip install 'forwardonly[tensorboard]'``, ``[wandb]``,
``[mlflow]``; a missing one is a one-line error naming that command):

============  =====================================================================================
tensorboard   ``torch.utils.tensorboard.SummaryWriter`` writing ``OUT/tensorboard/``
              (``tensorboard --logdir OUT/tensorboard``)
wandb         ``wandb.init(dir=OUT, config=..., name=...)``; ``WANDB_MODE=offline`` logs to
              ``OUT/wandb/`` without an account (``wandb sync`` uploads it later);
              ``WANDB_PROJECT`` names the project (default ``forwardonly``)
mlflow        an MLflow run in ``$MLFLOW_TRACKING_URI``, by default the local file store
              ``OUT/mlruns`` (``mlflow ui --backend-store-uri OUT/mlruns``);
              ``MLFLOW_EXPERIMENT_NAME`` names the experiment (default ``forwardonly``)
============  =====================================================================================

A row is logged as ``GROUP/KEY`` scalars at its step (``train/loss``,
``validation/accuracy``, ...); the run's configuration goes with the first call
(W&B config, MLflow params, a TensorBoard text entry).

Example::

    with open_trackers(["tensorboard"], "runs/a", config={"optim": {"lr": 1e-4}}, run_name="a") as track:
        track.log({"loss": 0.7, "lr": 1e-4}, step=10, group="train")
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .errors import UserError, require

BACKENDS = ("tensorboard", "wandb", "mlflow")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _scalars(row: dict, group: str) -> dict[str, float]:
    return {f"{group}/{k}": float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoard:
    """Scalars into ``OUT/tensorboard`` through ``torch.utils.tensorboard``."""

    def __init__(self, out: Path, config: dict, run_name: str):
        require("tensorboard", "report_to=tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```")

    def log(self, scalars: dict[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    """A W&B run in ``OUT/wandb``; its mode (online, offline) is W&B's own setting (``WANDB_MODE``)."""

    def __init__(self, out: Path, config: dict, run_name: str):
        wandb = require("wandb", "report_to=wandb")
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "forwardonly"), dir=str(out),
                                  config=config, name=run_name)
        except Exception as e:  # wandb raises its own error types for login/network problems
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"report_to=wandb: {first} (WANDB_MODE=offline logs locally without an "
                            f"account)") from None

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    """An MLflow run through ``MlflowClient`` (no global active run is left behind)."""

    def __init__(self, out: Path, config: dict, run_name: str):
        require("mlflow", "report_to=mlflow")
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (out / "mlruns").resolve().as_uri()
            # MLflow 3 keeps the file store only behind this switch; a local run directory is what we promise
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "forwardonly")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        # MLflow caps a param's value at 500 characters
        params = [Param(k, str(v)[:500]) for k, v in _flat(config).items()]
        for i in range(0, len(params), 100):  # and a batch at 100 params
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_CLASSES = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def check_backends(names) -> None:
    """Fail early (before a run writes anything) on an unknown backend or one whose library is missing."""
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise UserError(f"report_to: unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    for name in names:
        require(name, f"report_to={name}")


class Trackers:
    """The open backends of one run; ``log`` sends a row to all of them. A context manager."""

    def __init__(self, backends: list):
        self.backends = backends

    def log(self, row: dict, step: int, group: str = "train") -> None:
        scalars = _scalars(row, group)
        if scalars:
            for b in self.backends:
                b.log(scalars, step)

    def close(self) -> None:
        for b in self.backends:
            b.close()
        self.backends = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_trackers(names, out_dir, config: dict, run_name: str | None = None) -> Trackers:
    """Open the backends in ``names`` (see :data:`BACKENDS`) for a run writing to ``out_dir``."""
    check_backends(names)
    if names and out_dir is None:
        raise UserError(f"report_to={','.join(names)} needs out_dir (the tracking files go into the run)")
    out = Path(out_dir) if out_dir is not None else Path(".")
    run_name = run_name or out.resolve().name
    opened: list = []
    try:
        for name in dict.fromkeys(names):
            opened.append(_CLASSES[name](out, config, run_name))
    except BaseException:
        Trackers(opened).close()
        raise
    return Trackers(opened)
