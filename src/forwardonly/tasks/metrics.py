"""Metrics: accuracy, macro F1, and SQuAD-style token F1 / exact match.

The QA normalisation follows the SQuAD v1.1 evaluation script: lower-case,
strip punctuation and the articles a/an/the, collapse whitespace. A
prediction is scored against every gold answer and keeps the best score.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, answers: list[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in answers))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: list[str]) -> float:
    pred = normalize_answer(prediction).split()
    return max(_f1(pred, normalize_answer(a).split()) for a in answers)


def accuracy(predictions, targets) -> float:
    predictions, targets = list(predictions), list(targets)
    return sum(int(p == t) for p, t in zip(predictions, targets)) / max(len(targets), 1)


def macro_f1(predictions, targets, num_classes: int) -> float:
    """Unweighted mean over classes of per-class F1 (classes absent from both count as 1)."""
    predictions, targets = list(predictions), list(targets)
    scores = []
    for c in range(num_classes):
        tp = sum(1 for p, t in zip(predictions, targets) if p == c and t == c)
        fp = sum(1 for p, t in zip(predictions, targets) if p == c and t != c)
        fn = sum(1 for p, t in zip(predictions, targets) if p != c and t == c)
        scores.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / max(num_classes, 1)
