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
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                f"{e.start + 1})") from None
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
    if suffix == ".csv":
        from ..io import read_text_file

        read_text_file(path, "CSV file")  # bytes that are not UTF-8: name the line before pandas sees them
    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()  # its own "Failed to read file" lines would repeat our error
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # noqa: BLE001 - datasets raises many types for unreadable files
        cause = e.__cause__ or e.__context__ or e
        msg = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise UserError(f"{path}: could not read {builder} file ({msg[:200]})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
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
