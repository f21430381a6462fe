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
sft               supervised fine-tuning: a ``prompt`` template and a
                  ``completion_field``, or a chat in ``messages_field`` (a list of
                  ``{"role", "content"}`` ending with the assistant's turn, put
                  through the tokenizer's chat template); the loss is on the
                  completion's tokens only, evaluation reports loss and perplexity,
                  and exact match of a greedy answer where ``reference_field`` is set
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

import yaml

from ..errors import UserError

KINDS = ("classification", "multiple_choice", "yes_no", "qa", "sft")
SPLITS = ("train", "validation", "test")
BUILTIN_DIR = Path(__file__).parent / "builtin"


def builtin_names() -> list[str]:
    """The built-in tasks' names (``builtin/NAME.yaml``)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


@dataclass
class Template:
    """How a row becomes a prompt and its candidates (fields unused by a kind are ignored).

    ``prompt`` defaults to ``"{prompt}"`` for ``sft`` and ``"{text}"`` otherwise. ``labels`` maps
    label values to label words; a list (or ``"negative,positive"`` on the command line) gives
    each label the word ``" " + label``.
    """

    prompt: str | None = None
    label_field: str = "label"
    labels: dict | list = field(default_factory=dict)
    options_field: str = "options"
    answer_field: str = "answer"
    option: str = " {option}"
    score: Literal["mean", "sum"] = "mean"
    answers_field: str = "answers"
    answer_prefix: str = " "
    max_new_tokens: int = 16
    completion_field: str = "completion"
    messages_field: str = "messages"
    reference_field: str | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"template.max_new_tokens={self.max_new_tokens} must be at least 1")
        labels = self.labels
        if isinstance(labels, str):
            try:
                labels = yaml.safe_load(labels)
            except yaml.YAMLError:
                raise ValueError(f"template.labels={self.labels!r} is neither a mapping nor a list") from None
            labels = [x.strip() for x in labels.split(",") if x.strip()] if isinstance(labels, str) else labels
        if isinstance(labels, (list, tuple)):
            labels = {str(x): f" {x}" for x in labels}
        if not isinstance(labels, dict):
            raise TypeError(f"template.labels={self.labels!r} must be a mapping (label: word) or a list of labels")
        self.labels = labels

    def prompt_for(self, kind: str) -> str:
        return self.prompt if self.prompt is not None else ("{prompt}" if kind == "sft" else "{text}")


@dataclass
class TaskSpec:
    """A task file: its name, kind, data files per split and template."""

    name: str = "task"
    kind: Literal["classification", "multiple_choice", "yes_no", "qa", "sft"] = "classification"
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
    notes: dict = field(default_factory=dict)  # where splits came from when not from the task's own files

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
    ex["where"] = where
    if spec.kind == "sft":
        return _render_sft(t, where, row, ex)
    ex["prompt"] = _fill(t.prompt_for(spec.kind), row, where, "prompt")
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


def _render_sft(t: Template, where: str, row: dict, ex: dict) -> dict:
    messages = row.get(t.messages_field)
    if messages is not None:
        ok = isinstance(messages, list) and len(messages) >= 2 and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)
        if not ok or messages[-1]["role"] != "assistant":
            raise UserError(f"{where}: field '{t.messages_field}' must be a list of at least 2 "
                            f'{{"role", "content"}} messages ending with the assistant\'s')
        ex["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
        ex["prompt"] = "\n".join(m["content"] for m in messages[:-1])
        ex["completion"] = messages[-1]["content"]
    else:
        ex["prompt"] = _fill(t.prompt_for("sft"), row, where, "prompt")
        completion = row.get(t.completion_field)
        if not isinstance(completion, str) or not completion:
            raise UserError(f"{where}: row has no completion: field '{t.completion_field}' must be a non-empty "
                            f"string, or '{t.messages_field}' a chat (fields: {', '.join(sorted(map(str, row)))})")
        ex["completion"] = completion
    if t.reference_field is not None:
        ref = row.get(t.reference_field)
        ref = [ref] if isinstance(ref, str) else ref
        if not isinstance(ref, (list, tuple)) or not ref or not all(isinstance(a, str) for a in ref):
            raise UserError(f"{where}: field '{t.reference_field}' (template.reference_field) must be a string "
                            f"or a non-empty list of strings, got {row.get(t.reference_field)!r}")
        ex["answers"] = list(ref)
    return ex
