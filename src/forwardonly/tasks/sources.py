"""Where a task's rows come from: data files, dataset directories and ``datasets.load_dataset`` names.

Every source yields ``{split: [(location, row), ...]}``; the location names the file and line
(``reviews.jsonl:12``) or the dataset, split and row (``imdb[test] row 7``), so that a bad row is
reported exactly.

* a dataset directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` is read
  with ``datasets.load_from_disk``; any other directory with ``datasets.load_dataset(DIR)`` (a folder
  of data files, split names taken from the file names);
* a packaged ``datasets`` builder (``json``, ``csv``, ``parquet``, ``text``) reads the files the task
  names per split (``load_dataset("json", data_files={"train": ...})``);
* any other name is a dataset on the Hugging Face hub (``load_dataset(NAME, subset)``; needs a
  network or the local ``datasets`` cache).

A single ``Dataset`` (no named splits) comes back as the one split ``ALL``, for the caller to split.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .task import builtin_names

PACKAGED = ("json", "csv", "parquet", "text", "arrow")
ALL = "*"


def is_dataset_dir(path: Path) -> bool:
    """Whether ``path`` is a directory ``save_to_disk`` wrote (a ``Dataset`` or a ``DatasetDict``)."""
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


def _rows(ds, label: str) -> list[tuple[str, dict]]:
    return [(f"{label} row {i + 1}", dict(row)) for i, row in enumerate(ds)]


def _splits(obj, label: str) -> dict[str, list]:
    import datasets

    if isinstance(obj, datasets.DatasetDict):
        return {s: _rows(d, f"{label}[{s}]") for s, d in obj.items()}
    return {ALL: _rows(obj, label)}


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[-1] if text else type(e).__name__)[:200]


def read_dataset(source: str | Path, subset: str | None = None, data_files: dict | None = None) -> dict:
    """``{split: [(location, row), ...]}`` from a dataset directory or a ``datasets`` name (see the module doc)."""
    import datasets

    datasets.disable_progress_bars()
    label = str(source)
    try:
        if isinstance(source, Path) and is_dataset_dir(source):
            return _splits(datasets.load_from_disk(str(source)), label)
        if isinstance(source, Path):
            return _splits(datasets.load_dataset(str(source)), label)
        if data_files:
            files = {s: str(Path(f).expanduser()) for s, f in data_files.items()}
            for split, f in files.items():
                if not Path(f).is_file():
                    raise UserError(f"task.data.{split}: data file not found: {f}")
            return _splits(datasets.load_dataset(source, subset, data_files=files), label)
        return _splits(datasets.load_dataset(source, subset), label)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types for missing or unreadable data
        if isinstance(source, Path) or source in PACKAGED:
            what = "dataset directory" if isinstance(source, Path) else f"{source} data"
            raise UserError(f"{label}: could not load {what}: {_first_line(e)}") from None
        raise UserError(f"unknown task {label!r}: not a built-in task ({', '.join(builtin_names())}), a file or a "
                        f"directory, and datasets.load_dataset could not load it ({_first_line(e)})") from None
