"""Loading a task: by name, from a task YAML, a data file, a dataset directory or a ``datasets`` name.

:func:`get_task` loads what a name points to, with config keys and template fields as overrides;
:func:`task_for_run` loads the task a run's :class:`~forwardonly.lm.config.TaskConfig` describes,
checks that the splits the run uses exist, and cuts a missing validation split from the training
split (seeded, recorded in ``Task.notes``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..config import load_config
from ..errors import UserError
from .data import SUFFIXES, read_rows
from .sources import ALL, PACKAGED, read_dataset
from .task import BUILTIN_DIR, Task, TaskSpec, Template, builtin_names, render


def _builtin_path(name: str) -> Path | None:
    p = BUILTIN_DIR / f"{name}.yaml"
    return p if p.is_file() else None


def _split_rows(rows: list, seed: int) -> dict[str, list]:
    # A bare data file: a seeded 80/10/10 split, stable across runs.
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n = len(rows)
    n_test = n_val = max(1, n // 10) if n >= 3 else 0
    return {"train": rows[n_test + n_val:] or rows, "validation": rows[n_test:n_test + n_val], "test": rows[:n_test]}


def _override_list(overrides: dict) -> list[str]:
    template_keys = set(Template.__dataclass_fields__)
    out = []
    for key, value in overrides.items():
        if value is None:
            continue
        key = f"template.{key}" if key in template_keys else key
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        out.append(f"{key}={value}")
    return out


def _resolve(name_or_path: str, has_data: bool) -> Path | str | None:
    """A task YAML or data file (Path), a dataset directory (Path), a datasets name (str), or None
    (a new task whose files all come from ``data``)."""
    builtin = _builtin_path(name_or_path)
    if builtin is not None:
        return builtin
    if name_or_path.startswith("bigbench/"):
        from .bigbench import fetched_yaml

        return fetched_yaml(name_or_path.split("/", 1)[1])
    path = Path(name_or_path).expanduser()
    if path.is_file() or path.is_dir():
        return path
    if name_or_path in PACKAGED or not has_data:
        if not has_data and (name_or_path.endswith((*SUFFIXES, ".yaml", ".yml")) or "\\" in name_or_path
                             or name_or_path.startswith((".", "/", "~"))):
            raise UserError(f"unknown task {name_or_path!r}: no such file, and not a built-in task "
                            f"({', '.join(builtin_names())})")
        return name_or_path
    return None


def get_task(name_or_path: str, *, data: dict | None = None, subset: str | None = None, **overrides) -> Task:
    """Load a task, with its data, template and kind optionally overridden.

    ``name_or_path`` is a built-in task, ``bigbench/NAME`` (after ``forwardonly data fetch
    bigbench``), a task YAML, a bare data file (JSONL/CSV/parquet, split 80/10/10 with ``seed``),
    a dataset directory (``save_to_disk``, or a folder of data files) or a ``datasets.load_dataset``
    name (``subset`` is its configuration). ``data`` (``{split: file}``, paths relative to the
    working directory) replaces the task's own data files; with a name that is none of the above it
    makes a new task of that name. Overrides are config keys (``kind="yes_no"``, ``seed=1``) or
    template fields (``prompt="Q: {question}\\nA:"``, ``labels=["no", "yes"]``); unknown keys fail.

    Example::

        task = get_task("sentiment")
        task.splits["test"][0]["prompt"]   # 'Review: ...\\nSentiment:'
        mine = get_task("reviews", data={"train": "train.jsonl"}, kind="yes_no", prompt="{question}")
    """
    source = _resolve(name_or_path, bool(data))
    over = _override_list(overrides)
    if isinstance(source, Path) and source.is_file() and source.suffix.lower() not in SUFFIXES:
        spec = load_config(TaskSpec, source, over)  # a task YAML
        if not spec.data and not data:
            raise UserError(f"{source}: a task needs data files (data: {{train: ..., test: ...}})")
        rows = {s: read_rows(_under(source.parent, f)) for s, f in spec.data.items()} if not data else {}
    else:
        name = Path(name_or_path).stem if isinstance(source, Path) else name_or_path.replace("/", "_")
        spec = load_config(TaskSpec, None, over, base={"name": name})
        if isinstance(source, Path) and source.is_file():
            rows = _split_rows(read_rows(source), spec.seed) if not data else {}
        elif source is not None:
            rows = read_dataset(source, subset, data if source in PACKAGED else None)
            if ALL in rows:
                rows = _split_rows(rows[ALL], spec.seed)
        else:
            rows = {}
    if data and source not in PACKAGED:
        rows = {s: read_rows(_under(Path.cwd(), f)) for s, f in data.items()}
    return _build(spec, rows, str(source or name_or_path))


def _under(base: Path, file) -> Path:
    file = Path(str(file)).expanduser()
    return file if file.is_absolute() else base / file


def _build(spec: TaskSpec, splits_rows: dict, where: str) -> Task:
    if spec.kind == "yes_no" and not spec.template.labels:
        spec.template.labels = {"yes": " Yes", "no": " No"}
    if spec.kind in ("classification", "yes_no"):
        labels = spec.template.labels
        if len(labels) < 2:
            raise UserError(f"{where}: task '{spec.name}' ({spec.kind}) needs template.labels with at least 2 "
                            f"label words, got {labels!r} (e.g. task.template.labels=negative,positive)")
        empty = [k for k, v in labels.items() if not str(v).strip()]
        if empty:
            raise UserError(f"{where}: label word for {empty[0]!r} is empty")
    splits = {s: [render(spec, loc, row) for loc, row in rows] for s, rows in splits_rows.items()}
    return Task(spec.name, spec.kind, spec.template, splits, [str(k) for k in spec.template.labels])


def task_for_run(tc, needs: list[str]) -> Task:
    """The task ``tc`` (a :class:`~forwardonly.lm.config.TaskConfig`) describes, with the ``needs`` splits.

    A missing validation split (``tc.eval_split``) is cut from ``tc.train_split``: ``tc.val_fraction``
    of its examples, shuffled with ``tc.split_seed``; ``Task.notes`` records it. Any other missing
    split is an error that says how to give it.
    """
    over = {"kind": tc.kind, **tc.template}
    task = get_task(tc.name, data=dict(tc.data) or None, subset=tc.subset, **over)
    if tc.eval_split in needs and tc.eval_split not in task.splits and tc.train_split in task.splits:
        train = list(task.splits[tc.train_split])
        random.Random(tc.split_seed).shuffle(train)
        n = max(1, round(tc.val_fraction * len(train)))
        if len(train) < 2:
            raise UserError(f"task '{task.name}': {len(train)} training example(s), too few to cut a "
                            f"{tc.eval_split!r} split from; give one (task.data.{tc.eval_split}=FILE) or validate=false")
        task.splits[tc.eval_split], task.splits[tc.train_split] = train[:n], train[n:]
        task.notes[tc.eval_split] = {"cut_from": tc.train_split, "fraction": tc.val_fraction, "seed": tc.split_seed,
                                     "n": n}
    for split in needs:
        if split not in task.splits:
            raise UserError(f"task '{task.name}' has no split {split!r} (it has {sorted(task.splits) or 'none'}); "
                            f"give it as task.data.{split}=FILE" + _skip_hint(tc, split))
    return task


def _skip_hint(tc, split: str) -> str:
    if split == tc.test_split:
        return " or skip it with test=false"
    if split == tc.eval_split:
        return " or skip it with validate=false"
    return " or train no steps (steps=0)"
