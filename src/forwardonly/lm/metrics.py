"""A run's metric rows: ``metrics.jsonl`` (appended one JSON line at a time, so a crash loses at most the line
being written) and the ``report_to`` trackers."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError, WriteError
from ..io import atomic_write_text


class Rows:
    """Where the metric rows go: ``metrics.jsonl`` (rank 0; on resume, the rows up to the resumed step are
    kept, less the final evaluations of a run resumed at its end) and the ``report_to`` trackers."""

    def __init__(self, path: Path | None, resumed_at: int | None, trackers, drop_evals_at_end: bool = False):
        self.path, self.trackers = path, trackers
        if path is not None:
            old = _read_metrics(path) if resumed_at is not None else []
            kept = [r for r in old if r.get("step", 0) < resumed_at or (r.get("step", 0) == resumed_at and not
                                                                        (drop_evals_at_end and "split" in r))]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def _write(self, row: dict) -> None:
        if self.path is not None:
            _append_line(self.path, json.dumps(row))

    def train(self, row: dict) -> None:
        self._write(row)
        self.trackers.log(row, row["step"], "train")

    def eval(self, split: str, metrics: dict, forwards: int) -> None:
        step = metrics["step"]
        self._write({"step": step, "split": split, "forwards": forwards, **{k: v for k, v in metrics.items()
                                                                             if k != "step"}})
        self.trackers.log(metrics, step, split)

    def close(self) -> None:
        self.trackers.close()


def _read_metrics(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; a last line cut short by a crash mid-append is dropped."""
    if not path.is_file():
        return []
    from ..io import read_text_file

    lines = read_text_file(path, "metrics log").split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):  # no newline after it: the append never finished
                break
            raise UserError(f"{path}:{i}: metrics log is not valid JSON ({e.msg})") from None
    return rows


def _append_line(path: Path, line: str) -> None:
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror}") from e
