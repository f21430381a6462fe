"""Which objective a task gets: label words, options, a classifier head, QA or a completion's tokens.

Kept apart from :mod:`~forwardonly.tasks.objectives` because it picks among the objectives of every
task kind, :class:`~forwardonly.tasks.sft.Completion` included, which itself builds on
:class:`~forwardonly.tasks.objectives.QA`: here both are imported without an import cycle.

Example::

    obj = make_objective(task, tok, "ce")     # LabelWords for a classification task with one-token labels
"""

from __future__ import annotations

from ..errors import UserError
from .objectives import QA, Classifier, LabelWords, Objective, Options
from .sft import Completion


def _single_token_ids(task, tokenizer):
    """Token id per label word, or None if some label word is several tokens."""
    ids = []
    for name, word in zip(task.label_names, task.template.labels.values()):
        toks = tokenizer(str(word), add_special_tokens=False)["input_ids"]
        if not toks:
            raise UserError(f"task '{task.name}': label word {word!r} (label {name!r}) tokenizes to nothing")
        ids.append(toks)
    if all(len(t) == 1 for t in ids):
        flat = [t[0] for t in ids]
        if len(set(flat)) < len(flat):
            raise UserError(f"task '{task.name}': label words {list(task.template.labels.values())} "
                            f"tokenize to the same token")
        return flat
    return None


def is_classifier(model) -> bool:
    base = getattr(model, "get_base_model", lambda: model)()
    return type(base).__name__.endswith("ForSequenceClassification")


def make_objective(task, tokenizer, objective: str = "ce", max_length: int = 512, *, model=None,
                   model_kind: str | None = None) -> Objective:
    """The objective for ``task``: label words, options, a classifier head, or QA.

    Pass ``model`` (or ``model_kind="classifier"``) for encoders with a
    classification head; the default is a causal LM.
    """
    kind = model_kind or ("classifier" if model is not None and is_classifier(model) else "causal")
    if kind == "classifier":
        if task.kind not in ("classification", "yes_no"):
            raise UserError(f"task '{task.name}' is {task.kind}; a classifier model handles classification "
                            f"and yes_no tasks only")
        return Classifier(task, tokenizer, objective, max_length)
    if task.kind == "sft":
        if objective != "ce":
            raise UserError(f"task '{task.name}' is sft: it trains on the completion's token loss (objective 'ce'), "
                            f"not {objective!r}")
        return Completion(task, tokenizer, objective, max_length)
    if task.kind == "qa":
        return QA(task, tokenizer, objective, max_length)
    if objective == "f1" and task.kind == "multiple_choice":
        raise UserError("objective 'f1' needs a classification or qa task; use 'accuracy' or 'ce'")
    if task.kind in ("classification", "yes_no"):
        ids = _single_token_ids(task, tokenizer)
        if ids is not None:
            return LabelWords(task, tokenizer, objective, max_length, label_ids=ids)
    return Options(task, tokenizer, objective, max_length, reduce=task.template.score)
