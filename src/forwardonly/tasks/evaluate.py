"""Evaluation of a model on a task split: accuracy, or F1 and exact match for QA."""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from . import metrics
from .objectives import QA
from .pick import make_objective


def evaluate(model, tokenizer, task, split: str = "test", *, batch_size: int = 16, max_examples=None,
             device="cpu", progress: bool = True, max_length: int = 512) -> dict:
    """Score ``model`` on ``task.splits[split]``.

    Returns ``{"accuracy", "n"}`` (plus ``"macro_f1"`` for classification and
    yes/no tasks), for QA ``{"f1", "exact_match", "n"}``, and for ``sft`` tasks
    ``{"loss", "perplexity", "tokens", "n"}`` (plus ``"exact_match"`` where the task
    has references); accuracies are fractions in [0, 1]. Runs under ``torch.inference_mode``.
    """
    if split not in task.splits:
        raise UserError(f"task '{task.name}' has no split {split!r}; it has {sorted(task.splits)}")
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be at least 1")
    examples = task.splits[split][: max_examples or None]
    # Similar lengths in a batch waste less compute on padding; the metrics do not depend on order.
    examples = sorted(examples, key=lambda ex: len(ex["prompt"]))
    if not examples:
        raise UserError(f"task '{task.name}' split {split!r} is empty")
    objective = make_objective(task, tokenizer, "ce" if task.kind == "sft" else "accuracy", max_length, model=model)
    was_training = model.training
    model.eval()
    preds, golds = [], []
    nll, tokens = 0.0, 0
    chunks = range(0, len(examples), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"eval {task.name}/{split}", unit="batch", leave=False)
    try:
        with torch.inference_mode():
            for i in chunks:
                part = examples[i:i + batch_size]
                batch = objective.batch(part, device)
                if task.kind == "sft":
                    s, k = objective.nll(model, batch)
                    nll, tokens = nll + float(s), tokens + k
                    if batch.answers:
                        preds += objective.generate(model, batch)
                        golds += batch.answers
                elif isinstance(objective, QA):
                    preds += objective.generate(model, batch)
                    golds += batch.answers
                else:
                    preds += objective.predict(model, batch).tolist()
                    golds += batch.target.tolist()
    finally:
        model.train(was_training)
    n = len(golds)
    if task.kind == "sft":
        out = {"loss": nll / tokens, "perplexity": math.exp(min(nll / tokens, 700.0)), "tokens": tokens,
               "n": len(examples)}
        if golds:
            out["exact_match"] = sum(metrics.exact_match(p, a) for p, a in zip(preds, golds)) / n
        return out
    if isinstance(objective, QA):
        return {"f1": sum(metrics.token_f1(p, a) for p, a in zip(preds, golds)) / n,
                "exact_match": sum(metrics.exact_match(p, a) for p, a in zip(preds, golds)) / n, "n": n}
    out = {"accuracy": metrics.accuracy(preds, golds), "n": n}
    if task.kind in ("classification", "yes_no"):
        out["macro_f1"] = metrics.macro_f1(preds, golds, len(task.label_names))
    return out
