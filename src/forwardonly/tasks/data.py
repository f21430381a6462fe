"""Reading example rows from JSONL, CSV and parquet files.

Every row comes back with its location (``file:line`` for JSONL and CSV,
``file:row N`` for parquet) so that a bad row can be reported exactly.
JSONL is parsed here (line numbers must be exact); CSV and parquet go through
Hugging Face ``datasets``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: str | Path) -> list[tuple[str, dict]]:
    """``[(location, row), ...]`` for every example in ``path``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    if suffix in (".csv", ".parquet"):
        return _read_with_datasets(path, suffix)
    raise UserError(f"{path}: unsupported data format {suffix!r}; use one of {', '.join(SUFFIXES)}")


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: a row must be a JSON object, got {type(row).__name__}")
            rows.append((f"{path}:{lineno}", row))
    if not rows:
        raise UserError(f"{path}: no examples")
    return rows


def _read_with_datasets(path: Path, suffix: str) -> list[tuple[str, dict]]:
    import datasets

    builder = "csv" if suffix == ".csv" else "parquet"
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - datasets raises many types for unreadable files
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: could not read {builder} file ({msg[:200]})") from None
    if len(ds) == 0:
        raise UserError(f"{path}: no examples")
    # CSV: line 1 is the header, so row i is on line i + 2 (for rows without embedded newlines).
    if suffix == ".csv":
        return [(f"{path}:{i + 2}", dict(row)) for i, row in enumerate(ds)]
    return [(f"{path}:row {i + 1}", dict(row)) for i, row in enumerate(ds)]


def write_jsonl(path: str | Path, rows) -> None:
    """Write rows as JSONL, atomically."""
    from ..io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
