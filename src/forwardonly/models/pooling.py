"""What a sequence classifier's head reads: the encoder's own pooler, or the mean of its last hidden states.

A BERT-family classifier (``BertForSequenceClassification`` and the like) feeds its head the *pooler*
output: a dense layer and ``tanh`` over the first token's last hidden state. Sentence encoders such as
all-MiniLM-L6 were trained to be read by the mean of the last hidden states over the real tokens, and
their pooler was never trained for it: a linear probe on the pooler output of all-MiniLM-L6 scores
near chance on few-shot sentiment, one on the mean of the hidden states far above it
(``benchmarks/convergence/probe_features.py``). ``model.pooling: mean`` makes the classifier's head read
that mean instead, so a linear-probe head starts from the features the encoder was trained for.

:func:`use_mean_pooling` replaces the encoder's ``pooler`` by :class:`MeanPooler` (no parameters) and
hands it each forward's attention mask through a pre-hook on the encoder; the pooler's own weights are
dropped from the model (they no longer take part in any output).

Example::

    model, tok = load_model("minilm-l6", kind="classifier")
    use_mean_pooling(model)
    model(**tok(["a fine film"], return_tensors="pt")).logits
"""

from __future__ import annotations

import torch

from ..errors import UserError

POOLINGS = ("default", "mean")


class MeanPooler(torch.nn.Module):
    """The mean of the last hidden states over the tokens the attention mask keeps (all, without a mask)."""

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is None or mask.shape != hidden_states.shape[:2]:
            return hidden_states.mean(1)
        m = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * m).sum(1) / m.sum(1).clamp_min(1.0)


def _encoder_with_pooler(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoder = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if encoder is None or not hasattr(encoder, "pooler"):
        raise UserError(f"model.pooling=mean needs an encoder classifier with a pooler (BERT family); "
                        f"{type(base).__name__} has none (use model.pooling=default)")
    return encoder


def use_mean_pooling(model) -> torch.nn.Module:
    """Make ``model``'s classification head read the masked mean of the last hidden states; returns ``model``."""
    encoder = _encoder_with_pooler(model)
    if isinstance(encoder.pooler, MeanPooler):
        return model
    pooler = MeanPooler()
    encoder.pooler = pooler

    def keep_mask(module, args, kwargs):
        pooler.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    encoder.register_forward_pre_hook(keep_mask, with_kwargs=True)
    return model


def apply_pooling(model, pooling: str):
    """``model`` with the head reading ``pooling`` (:data:`POOLINGS`)."""
    if pooling not in POOLINGS:
        raise UserError(f"model.pooling={pooling!r} is not one of {list(POOLINGS)}")
    return use_mean_pooling(model) if pooling == "mean" else model
