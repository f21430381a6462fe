"""Tasks are data: a YAML spec names the data files and a template.

A template turns a row into a prompt and candidate continuations. The kind
decides how candidates are scored:

================  ===============================================================
classification    label words: ``labels`` maps each label value to the text the
                  model should continue with (``positive: " positive"``)
yes_no            classification with ``labels`` defaulting to ``yes: " Yes"``,
                  ``no: " No"``; the label may be a bool or "yes"/"no"
multiple_choice   option log-likelihood: ``options_field`` holds a list, the
                  ``answer_field`` an index or the text of the right option
qa                extractive/generative QA: ``answers_field`` holds one or more
                  gold strings; scored by F1 and exact match of a greedy answer
================  ===============================================================

A task YAML (paths are relative to the YAML file)::

    # forwardonly eval model=smollm2-135m task=my_task.yaml
    name: my_sentiment
    kind: classification
    data: {train: train.jsonl, test: test.csv}
    template:
      prompt: "Review: {text}\\nSentiment:"
      labels: {negative: " negative", positive: " positive"}

Loading renders every row into an *example*: the row's fields plus
``prompt`` (str), ``choices`` (candidate continuations), ``target`` (index of
the right choice) or, for QA, ``answers`` (list of str); and ``where``
(``file:line``). Every problem found is a :class:`UserError` naming the file
and line.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import load_config
from ..errors import UserError
from .data import SUFFIXES, read_rows

KINDS = ("classification", "multiple_choice", "yes_no", "qa")
SPLITS = ("train", "validation", "test")
BUILTIN_DIR = Path(__file__).parent / "builtin"


@dataclass
class Template:
    """How a row becomes a prompt and its candidates (fields unused by a kind are ignored)."""

    prompt: str = "{text}"
    label_field: str = "label"
    labels: dict = field(default_factory=dict)
    options_field: str = "options"
    answer_field: str = "answer"
    option: str = " {option}"
    score: Literal["mean", "sum"] = "mean"
    answers_field: str = "answers"
    answer_prefix: str = " "
    max_new_tokens: int = 16

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"template.max_new_tokens={self.max_new_tokens} must be at least 1")


@dataclass
class TaskSpec:
    """A task file: its name, kind, data files per split and template."""

    name: str = "task"
    kind: Literal["classification", "multiple_choice", "yes_no", "qa"] = "classification"
    data: dict = field(default_factory=dict)
    template: Template = field(default_factory=Template)
    seed: int = 0

    def __post_init__(self):
        bad = set(self.data) - set(SPLITS)
        if bad:
            raise ValueError(f"data has unknown split(s) {sorted(bad)}; splits are {list(SPLITS)}")


@dataclass
class Task:
    """A loaded task: ``name``, ``kind``, ``template`` and ``splits`` of rendered examples."""

    name: str
    kind: str
    template: Template
    splits: dict[str, list[dict]]
    label_names: list[str] = field(default_factory=list)

    def __repr__(self):
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"Task({self.name!r}, kind={self.kind!r}, {sizes})"


def per_class(examples: list[dict], k: int, seed: int, where: str = "the training split") -> list[dict]:
    """``k`` examples of every class of ``examples`` (by ``target``), drawn with ``seed``, in their original order.

    MeZO's few-shot protocol (Malladi et al., 2023; after Gao et al., 2021): k training examples per
    class, a different draw per seed. A class with fewer than ``k`` examples is an error naming it.

    Example::

        train = per_class(task.splits["train"], 16, seed=0)   # 16 negative + 16 positive sentences
    """
    by_class: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        if "target" not in ex:
            raise UserError(f"task.shots_per_class={k}: {where} has examples without a class (a QA task?)")
        by_class.setdefault(int(ex["target"]), []).append(i)
    chosen: list[int] = []
    for target in sorted(by_class):
        rows = by_class[target]
        if len(rows) < k:
            label = examples[rows[0]].get("choices", [target])[target] if rows else target
            raise UserError(f"task.shots_per_class={k}: class {target} ({str(label).strip()!r}) of {where} has only "
                            f"{len(rows)} examples")
        chosen += random.Random(f"shots:{seed}:{target}").sample(rows, k)
    return [examples[i] for i in sorted(chosen)]


def fields_of(fmt: str) -> list[str]:
    """The field names a ``str.format`` template refers to."""
    try:
        return [name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(fmt) if name]
    except ValueError as e:
        raise UserError(f"template {fmt!r} is not a valid format string ({e})") from None


def _fill(fmt: str, row: dict, where: str, what: str) -> str:
    for name in fields_of(fmt):
        if name not in row:
            have = ", ".join(sorted(map(str, row))) or "none"
            raise UserError(f"{where}: template {what} references field '{name}', which this row lacks "
                            f"(fields: {have})")
    return fmt.format_map({k: ("" if v is None else v) for k, v in row.items()})


def _norm_yes_no(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and value in (0, 1):
        return "yes" if value else "no"
    if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false"):
        return "yes" if value.strip().lower() in ("yes", "true") else "no"
    return value


def render(spec: TaskSpec, where: str, row: dict) -> dict:
    """One example from one row (see the module docstring)."""
    t = spec.template
    ex = dict(row)
    ex["prompt"] = _fill(t.prompt, row, where, "prompt")
    ex["where"] = where
    if spec.kind in ("classification", "yes_no"):
        if t.label_field not in row:
            raise UserError(f"{where}: row has no label field '{t.label_field}' (fields: {', '.join(sorted(row))})")
        value = row[t.label_field]
        value = _norm_yes_no(value) if spec.kind == "yes_no" else value
        keys = [str(k) for k in t.labels]
        if str(value) not in keys:
            raise UserError(f"{where}: label {value!r} is not one of the task's labels {keys}")
        ex["choices"] = [str(v) for v in t.labels.values()]
        ex["target"] = keys.index(str(value))
    elif spec.kind == "multiple_choice":
        options = row.get(t.options_field)
        if not isinstance(options, (list, tuple)) or len(options) < 2:
            raise UserError(f"{where}: field '{t.options_field}' must be a list of at least 2 options, got {options!r}")
        answer = row.get(t.answer_field)
        if isinstance(answer, str) and answer in options:
            answer = list(options).index(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
            raise UserError(f"{where}: answer {answer!r} in field '{t.answer_field}' is not an option index "
                            f"0..{len(options) - 1} or an option's text")
        ex["choices"] = [_fill(t.option, {**row, "option": o}, where, "option") for o in options]
        ex["target"] = answer
    else:  # qa
        answers = row.get(t.answers_field)
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, (list, tuple)) or not answers or not all(isinstance(a, str) for a in answers):
            raise UserError(f"{where}: field '{t.answers_field}' must be a non-empty list of strings, got {answers!r}")
        ex["answers"] = list(answers)
    return ex


def _builtin_path(name: str) -> Path | None:
    p = BUILTIN_DIR / f"{name}.yaml"
    return p if p.is_file() else None


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def _split_rows(rows: list, seed: int) -> dict[str, list]:
    # A bare data file: a seeded 80/10/10 split, stable across runs.
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n = len(rows)
    n_test = n_val = max(1, n // 10) if n >= 3 else 0
    return {"train": rows[n_test + n_val:] or rows, "validation": rows[n_test:n_test + n_val], "test": rows[:n_test]}


def _override_list(overrides: dict) -> list[str]:
    template_keys = {f for f in Template.__dataclass_fields__}
    out = []
    for key, value in overrides.items():
        key = f"template.{key}" if key in template_keys else key
        if isinstance(value, dict):
            import json

            value = json.dumps(value)
        out.append(f"{key}={value}")
    return out


def _resolve(name_or_path: str) -> Path:
    builtin = _builtin_path(name_or_path)
    if builtin is not None:
        return builtin
    if name_or_path.startswith("bigbench/"):
        from .bigbench import fetched_yaml

        return fetched_yaml(name_or_path.split("/", 1)[1])
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise UserError(f"unknown task {name_or_path!r}: not a built-in task ({', '.join(builtin_names())}) "
                        f"nor an existing task YAML or data file")
    return path


def get_task(name_or_path: str, **overrides) -> Task:
    """Load a built-in task by name, ``bigbench/NAME`` (after ``forwardonly data fetch
    bigbench``), a task YAML, or a bare data file (JSONL/CSV/parquet; give ``kind``
    and the template as overrides; split 80/10/10 with ``seed``).

    Overrides are config keys (``kind="yes_no"``, ``seed=1``) or template fields
    (``prompt="Q: {question}\\nA:"``, ``labels={...}``); unknown keys are rejected.

    Example::

        task = get_task("sentiment")
        task.splits["test"][0]["prompt"]   # 'Review: ...\\nSentiment:'
    """
    path = _resolve(name_or_path)
    over = _override_list(overrides)
    if path.suffix.lower() in SUFFIXES:
        spec = load_config(TaskSpec, None, over, base={"name": path.stem})
        rows = read_rows(path)
        splits_rows = _split_rows(rows, spec.seed)
    else:
        spec = load_config(TaskSpec, path, over)
        if not spec.data:
            raise UserError(f"{path}: a task needs data files (data: {{train: ..., test: ...}})")
        splits_rows = {}
        for split, file in spec.data.items():
            file = Path(str(file)).expanduser()
            splits_rows[split] = read_rows(file if file.is_absolute() else path.parent / file)
    if spec.kind == "yes_no" and not spec.template.labels:
        spec.template.labels = {"yes": " Yes", "no": " No"}
    if spec.kind in ("classification", "yes_no"):
        labels = spec.template.labels
        if len(labels) < 2:
            raise UserError(f"{path}: task '{spec.name}' ({spec.kind}) needs template.labels with at least 2 "
                            f"label words, got {labels!r}")
        empty = [k for k, v in labels.items() if not str(v).strip()]
        if empty:
            raise UserError(f"{path}: label word for {empty[0]!r} is empty")
    splits = {s: [render(spec, where, row) for where, row in rows] for s, rows in splits_rows.items()}
    return Task(spec.name, spec.kind, spec.template, splits, [str(k) for k in spec.template.labels])
