"""Objectives: a batch of examples -> one scalar loss from forward passes only.

Three ways to score candidates, each one batched forward pass:

* :class:`LabelWords` - every candidate is a single token. Prompts are
  left-padded so position -1 is every row's last real token, and the model is
  asked for the last position's logits only (``logits_to_keep=1``); the scores
  are the logits of the label tokens.
* :class:`Options` - candidates of several tokens (multiple choice, multi-token
  label words, the gold answer of a QA example). Each (prompt, candidate) pair
  is one left-padded row, so candidates line up at the right edge and only the
  last ``K + 1`` positions' logits are computed (``K`` = longest candidate).
  A candidate's score is the sum or mean of its tokens' log-probabilities.
* :class:`Classifier` - an encoder with a sequence-classification head: the
  head's logits are the scores.

``objective="ce"`` is the cross-entropy of the softmax over candidate scores;
``"accuracy"`` and ``"f1"`` return ``1 - metric`` (not differentiable, usable
by zeroth-order optimizers as they are). QA uses the gold answer's mean token
negative log-likelihood for ``ce`` and ``1 - F1`` / ``1 - exact match`` of a
greedy answer otherwise.

Example::

    obj = make_objective(task, tok, "ce")
    batch = obj.batch(task.splits["train"][:16], "cpu")
    with torch.no_grad():
        loss = obj.loss(model, batch)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from ..errors import UserError
from . import metrics

OBJECTIVES = ("ce", "accuracy", "f1")


@dataclass
class Batch:
    """Tensors for one forward pass plus what scoring needs.

    ``rows`` maps each example to its candidate rows in ``input_ids`` (-1 where
    an example has fewer candidates); ``cand_len`` is each row's candidate
    length in tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    cand_len: torch.Tensor | None = None
    answers: list = field(default_factory=list)
    prompt_ids: torch.Tensor | None = None  # QA: prompts alone, for generation
    prompt_mask: torch.Tensor | None = None

    def to(self, device):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                setattr(self, f.name, v.to(device))
        return self

    def __len__(self):
        return self.target.shape[0] if self.target is not None else len(self.answers)

    def stacked(self, k: int = 2) -> Batch:
        """The batch stacked ``k`` times along dim 0, for a paired ZO evaluation (``paired=True``): copy
        ``j`` holds rows ``[j n, (j + 1) n)`` of the same examples; ``rows`` of each copy point into it."""
        def rep(t):
            return None if t is None else torch.cat([t] * k)

        rows = None
        if self.rows is not None:
            n = self.input_ids.shape[0]
            rows = torch.cat([torch.where(self.rows >= 0, self.rows + j * n, self.rows) for j in range(k)])
        return Batch(rep(self.input_ids), rep(self.attention_mask), rep(self.target), rows, rep(self.cand_len),
                     list(self.answers) * k, rep(self.prompt_ids), rep(self.prompt_mask))

    def doubled(self) -> Batch:
        """The batch stacked twice (:meth:`stacked`)."""
        return self.stacked(2)


def _slices() -> int:
    from ..optim.perturb import current_slices

    return current_slices() or 2


def _is_prompt_learning(model) -> bool:
    cfg = getattr(model, "active_peft_config", None)
    return bool(getattr(cfg, "is_prompt_learning", False))


def causal_forward(model, input_ids, attention_mask, logits_to_keep: int):
    """Logits of the last ``logits_to_keep`` positions of a left-padded batch."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "logits_to_keep": logits_to_keep,
              "use_cache": False}
    if not _is_prompt_learning(model):
        # Left padding shifts absolute positions; give each row positions 0.. from its first real token.
        # (PEFT prompt learning prepends virtual tokens and does its own positions.)
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return model(**kwargs).logits.float()


class Objective:
    """Base class: turns examples into a :class:`Batch` and a batch into a loss."""

    def __init__(self, task, tokenizer, objective: str = "ce", max_length: int = 512):
        if objective not in OBJECTIVES:
            raise UserError(f"objective {objective!r} is not one of {list(OBJECTIVES)}")
        if max_length < 8:
            raise UserError(f"max_length={max_length} is too small (at least 8)")
        self.task, self.tok, self.objective, self.max_length = task, tokenizer, objective, max_length

    def _prompt_ids(self, prompt: str, room: int) -> list[int]:
        ids = self.tok(prompt, add_special_tokens=True)["input_ids"]
        # Keep the end of a long prompt: the question and the cue sit there.
        if len(ids) > room:
            head = ids[:1] if ids and ids[0] == self.tok.bos_token_id else []
            ids = head + ids[len(ids) - room + len(head):]
        return ids

    def _pad_left(self, seqs: list[list[int]]):
        n = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        ids = torch.full((len(seqs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, n - len(s):] = 1
        return ids, mask

    def scores(self, model, batch: Batch) -> torch.Tensor:
        """(examples, candidates) scores; higher is better."""
        raise NotImplementedError

    def predict(self, model, batch: Batch):
        return self.scores(model, batch).argmax(-1)

    def loss(self, model, batch: Batch) -> torch.Tensor:
        """Scalar loss, lower is better. Call it under ``torch.no_grad()``."""
        return self._from_scores(self.scores(model, batch), batch.target)

    def paired_loss(self, model, batch: Batch) -> torch.Tensor:
        """The losses of the ``K`` slices of one forward over ``batch.stacked(K)``: the closure of a ZO
        optimizer made with ``paired=True`` (a tensor of shape (K,), each slice's loss :meth:`loss`'s).
        ``K`` is what the running evaluation asks for (:func:`forwardonly.optim.perturb.current_slices`;
        2 for a two-sided probe, ``q + 1`` for FZOO), 2 outside one."""
        k = _slices()
        s = self.scores(model, batch.stacked(k))
        n = len(batch)
        return torch.stack([self._from_scores(s[j * n : (j + 1) * n], batch.target) for j in range(k)])

    def _from_scores(self, s: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.objective == "ce":
            return with_rows(F.cross_entropy(s, target), F.cross_entropy(s, target, reduction="none"))
        pred = s.argmax(-1)
        if self.objective == "accuracy":
            return 1.0 - (pred == target).float().mean()
        f1 = metrics.macro_f1(pred.tolist(), target.tolist(), s.shape[-1])
        return torch.tensor(1.0 - f1)


class LabelWords(Objective):
    """Single-token label words scored from the last position's logits."""

    def __init__(self, task, tokenizer, objective="ce", max_length=512, label_ids=None):
        super().__init__(task, tokenizer, objective, max_length)
        self.label_ids = torch.tensor(label_ids, dtype=torch.long)

    def batch(self, examples: list[dict], device="cpu") -> Batch:
        ids, mask = self._pad_left([self._prompt_ids(ex["prompt"], self.max_length) for ex in examples])
        target = torch.tensor([ex["target"] for ex in examples], dtype=torch.long)
        return Batch(ids, mask, target).to(device)

    def scores(self, model, batch):
        logits = causal_forward(model, batch.input_ids, batch.attention_mask, 1)[:, -1]
        return logits[:, self.label_ids.to(logits.device)]


class Options(Objective):
    """Candidates of any length scored by their (mean or summed) token log-likelihood."""

    def __init__(self, task, tokenizer, objective="ce", max_length=512, reduce="mean"):
        super().__init__(task, tokenizer, objective, max_length)
        self.reduce = reduce

    def _candidates(self, ex: dict) -> list[str]:
        return ex["choices"]

    def batch(self, examples: list[dict], device="cpu") -> Batch:
        seqs, lens, rows = [], [], []
        width = max(len(self._candidates(ex)) for ex in examples)
        for ex in examples:
            cands = [self.tok(c, add_special_tokens=False)["input_ids"] for c in self._candidates(ex)]
            longest = max(len(c) for c in cands)
            if longest == 0 or longest >= self.max_length:
                raise UserError(f"{ex.get('where', 'example')}: a candidate tokenizes to "
                                f"{'nothing' if longest == 0 else f'{longest} tokens (max_length {self.max_length})'}")
            prompt = self._prompt_ids(ex["prompt"], self.max_length - longest)
            if not prompt:
                raise UserError(f"{ex.get('where', 'example')}: the prompt tokenizes to nothing")
            rows.append(list(range(len(seqs), len(seqs) + len(cands))) + [-1] * (width - len(cands)))
            for c in cands:
                if not c:
                    raise UserError(f"{ex.get('where', 'example')}: a candidate tokenizes to nothing")
                seqs.append(prompt + c)
                lens.append(len(c))
        ids, mask = self._pad_left(seqs)
        target = torch.tensor([ex.get("target", 0) for ex in examples], dtype=torch.long)
        return Batch(ids, mask, target, torch.tensor(rows), torch.tensor(lens)).to(device)

    def token_logprobs(self, model, batch):
        """(rows,) summed and mean log-probability of each row's candidate tokens."""
        k = int(batch.cand_len.max())
        logits = causal_forward(model, batch.input_ids, batch.attention_mask, k + 1)[:, :-1]
        next_ids = batch.input_ids[:, -k:]
        lp = torch.log_softmax(logits, -1).gather(-1, next_ids.unsqueeze(-1)).squeeze(-1)
        pos = torch.arange(k, device=lp.device)
        in_cand = pos.unsqueeze(0) >= (k - batch.cand_len).unsqueeze(1)
        total = (lp * in_cand).sum(-1)
        return total, total / batch.cand_len

    def scores(self, model, batch):
        total, mean = self.token_logprobs(model, batch)
        per_row = mean if self.reduce == "mean" else total
        safe = batch.rows.clamp(min=0)
        s = per_row[safe]
        return s.masked_fill(batch.rows < 0, float("-inf"))


class Classifier(Objective):
    """An encoder's sequence-classification logits; label order = the task's label order."""

    def batch(self, examples, device="cpu"):
        enc = self.tok([ex["prompt"] for ex in examples], padding=True, truncation=True,
                       max_length=self.max_length, return_tensors="pt", padding_side="right")
        target = torch.tensor([ex["target"] for ex in examples], dtype=torch.long)
        return Batch(enc["input_ids"], enc["attention_mask"], target).to(device)

    def scores(self, model, batch):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        if logits.shape[-1] != len(self.task.label_names):
            raise UserError(f"the model's classification head has {logits.shape[-1]} outputs but task "
                            f"'{self.task.name}' has {len(self.task.label_names)} labels")
        return logits


class QA(Options):
    """Generative QA: teacher-forced answer likelihood (``ce``) or greedy-answer F1/EM."""

    def _candidates(self, ex):
        return [self.task.template.answer_prefix + ex["answers"][0]]

    def batch(self, examples, device="cpu"):
        b = super().batch(examples)
        b.answers = [ex["answers"] for ex in examples]
        b.prompt_ids, b.prompt_mask = self._pad_left(
            [self._prompt_ids(ex["prompt"], self.max_length - self.task.template.max_new_tokens)
             for ex in examples])
        return b.to(device)

    def generate(self, model, batch) -> list[str]:
        """Greedy answers, cut at the first newline."""
        out = model.generate(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask,
                             max_new_tokens=self.task.template.max_new_tokens, do_sample=False,
                             pad_token_id=self.tok.pad_token_id,
                             stopping_criteria=[_NewlineStop(self.tok, batch.prompt_ids.shape[1])])
        texts = self.tok.batch_decode(out[:, batch.prompt_ids.shape[1]:], skip_special_tokens=True)
        return [t.split("\n")[0].strip() for t in texts]

    def loss(self, model, batch):
        if self.objective == "ce":
            _, mean = self.token_logprobs(model, batch)
            return with_rows(-mean.mean(), -mean)
        preds = self.generate(model, batch)
        score = metrics.exact_match if self.objective == "accuracy" else metrics.token_f1
        return torch.tensor(1.0 - sum(score(p, a) for p, a in zip(preds, batch.answers)) / len(preds))


    def paired_loss(self, model, batch):
        if self.objective != "ce":
            raise UserError(f"objective {self.objective!r} of a QA task generates answers, which a paired "
                            f"evaluation cannot split; use optim.paired=false")
        k = _slices()
        _, mean = self.token_logprobs(model, batch.stacked(k))
        return -mean.view(k, -1).mean(1)


def with_rows(loss: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``loss`` carrying its examples' losses as ``loss.rows`` (``lr: auto`` reads them to tell the batch's
    gradient noise from its signal; everything else sees the scalar)."""
    loss.rows = rows.detach()
    return loss


class _NewlineStop:
    """Stop generating once every row has produced a newline (answers are one line)."""

    def __init__(self, tok, start: int):
        self.tok, self.start = tok, start

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tok.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        done = torch.tensor(["\n" in t for t in texts], device=input_ids.device)
        return done
