"""Supervised fine-tuning objective: the loss on a completion's tokens, given its prompt.

Each example is a prompt and a completion (``kind: sft``). A chat example's prompt is its
messages but the last put through the tokenizer's chat template with the generation prompt,
and its completion is the rest of the rendered conversation (the assistant's turn with its
end-of-turn tokens). A plain completion gets the tokenizer's end-of-sequence token appended, so
the model also learns to stop. Prompt and completion are one left-padded row, and only the
completion's positions are scored (``logits_to_keep``), as :class:`~forwardonly.tasks.objectives.Options`
scores candidates.

The loss is the mean negative log-likelihood over all completion tokens of the batch; evaluation
reports it with its perplexity and, where the task names a ``reference_field``, the exact match
of a greedy answer against it.

Example::

    task = get_task("chats.jsonl", kind="sft")
    obj = make_objective(task, tok)               # a Completion objective
    loss = obj.loss(model, obj.batch(task.splits["train"][:8]))
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .objectives import QA, Batch


class Completion(QA):
    """Token loss of completions (``kind: sft``); greedy answers for exact match via :meth:`generate`."""

    def _chat(self, ex: dict) -> tuple[list[int], str]:
        if not getattr(self.tok, "chat_template", None):
            raise UserError(f"{ex.get('where', 'example')}: a chat example needs a tokenizer with a chat template; "
                            f"this model's tokenizer has none (give prompt and completion fields instead)")
        msgs = ex["messages"]
        prompt = self.tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
        full = self.tok.apply_chat_template(msgs, tokenize=False)
        if not full.startswith(prompt):
            raise UserError(f"{ex.get('where', 'example')}: the chat template renders the conversation so that it "
                            f"does not begin with its prompt; the completion cannot be separated")
        return self.tok(prompt, add_special_tokens=False)["input_ids"], full[len(prompt):]

    def _pair(self, ex: dict) -> tuple[list[int], list[int]]:
        """Token ids of (prompt, completion), cut to ``max_length`` (prompt kept at its end)."""
        if "messages" in ex:
            prompt, text = self._chat(ex)
            completion = self.tok(text, add_special_tokens=False)["input_ids"]
        else:
            prompt = self.tok(ex["prompt"], add_special_tokens=True)["input_ids"]
            completion = self.tok(ex["completion"], add_special_tokens=False)["input_ids"]
            if self.tok.eos_token_id is not None:
                completion = completion + [self.tok.eos_token_id]
        if not completion:
            raise UserError(f"{ex.get('where', 'example')}: the completion tokenizes to nothing")
        # Room: at least half of max_length for the prompt's end, the rest for the completion's start.
        completion = completion[: self.max_length - min(len(prompt), self.max_length // 2)]
        room = self.max_length - len(completion)
        prompt = prompt[len(prompt) - room:] if len(prompt) > room else prompt
        return prompt, completion

    def batch(self, examples: list[dict], device="cpu") -> Batch:
        pairs = [self._pair(ex) for ex in examples]
        ids, mask = self._pad_left([p + c for p, c in pairs])
        n = len(examples)
        b = Batch(ids, mask, torch.zeros(n, dtype=torch.long), torch.arange(n).unsqueeze(1),
                  torch.tensor([len(c) for _, c in pairs]))
        if all("answers" in ex for ex in examples):
            b.answers = [ex["answers"] for ex in examples]
            room = self.max_length - self.task.template.max_new_tokens
            b.prompt_ids, b.prompt_mask = self._pad_left([p[max(0, len(p) - room):] for p, _ in pairs])
        return b.to(device)

    def nll(self, model, batch: Batch) -> tuple[torch.Tensor, int]:
        """Summed negative log-likelihood of the batch's completion tokens, and their count."""
        total, _ = self.token_logprobs(model, batch)
        return -total.sum(), int(batch.cand_len.sum())

    def loss(self, model, batch):
        nll, tokens = self.nll(model, batch)
        return nll / tokens

    def paired_loss(self, model, batch):
        total, _ = self.token_logprobs(model, batch.doubled())
        half = int(batch.cand_len.sum())
        return -total.view(2, -1).sum(1) / half
