"""Initialise a sequence classifier's head by a linear probe on the training examples' features.

An encoder loaded with a new classification head starts from a random linear map. First-order
fine-tuning repairs that in a few steps; zeroth-order fine-tuning mostly does not: one random
direction per step over millions of weights carries almost no signal about the few thousand head
weights that decide every prediction, and a run ends on the majority class. MeZO (Malladi et al.,
2023, "Fine-Tuning Language Models with Just Forward Passes", section on linear probing then
MeZO) starts instead from a linear probe: the encoder's features of the training examples are
computed once, with forward passes, and a logistic regression fitted on them becomes the head.

:func:`linear_probe_head` does that for any ``*ForSequenceClassification`` model whose head ends
in a linear layer (BERT's ``classifier``, RoBERTa's ``classifier.out_proj``, a decoder's
``score``): the features are that layer's inputs, captured by a forward hook in eval mode, and the
fit is an L2-regularised multinomial logistic regression (scikit-learn's ``C=1`` convention:
``sum of cross-entropies + 0.5 * l2 * |W|^2``, ``l2 = 1`` unless ``model.head_l2`` says otherwise,
optionally on standardised features: ``model.head_standardize``) solved by L-BFGS on the features alone, so
no gradient flows through the encoder. The fit is deterministic for given features. A head without a bias
(a decoder's ``score``) is given one.

Example::

    from forwardonly.models.head_init import linear_probe_head
    obj = make_objective(task, tok, "ce", 64, model=model)
    info = linear_probe_head(model, obj, task.splits["train"][:32])
    info["train_accuracy"]
"""

from __future__ import annotations

import torch

from ..errors import UserError

HEAD_INITS = ("random", "linear_probe")


def head_layer(model) -> tuple[str, torch.nn.Linear]:
    """``(name, layer)``: the last linear layer of a sequence classifier's head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for attr in ("classifier", "score"):
        module = getattr(base, attr, None)
        if module is None:
            continue
        linears = [(f"{attr}.{n}" if n else attr, m) for n, m in module.named_modules()
                   if isinstance(m, torch.nn.Linear)]
        if linears:
            return linears[-1]
    raise UserError(f"model.head_init=linear_probe needs a sequence classifier whose head ends in a linear "
                    f"layer; {type(base).__name__} has none (use model.kind=classifier, or head_init=random)")


@torch.no_grad()
def head_features(model, objective, examples: list[dict], batch_size: int = 32,
                  device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input features (n, hidden) and targets (n,) of ``examples``, from forward passes only."""
    _, layer = head_layer(model)
    feats: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    targets = []
    try:
        for i in range(0, len(examples), batch_size):
            batch = objective.batch(examples[i:i + batch_size], device)
            objective.scores(model, batch)
            targets.append(batch.target.cpu())
            if feats[-1].dim() == 3:  # a decoder's head scores every token; the logits are read at one of them
                feats[-1] = feats[-1][torch.arange(feats[-1].shape[0]), _read_position(model, batch.input_ids)]
    finally:
        hook.remove()
        model.train(was_training)
    x = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
    y = torch.cat(targets)
    if x.shape[0] != y.shape[0]:
        raise UserError(f"model.head_init=linear_probe: the head saw {x.shape[0]} feature rows for {y.shape[0]} "
                        f"examples (a head that pools inside its linear layers is not supported)")
    return x, y


def _read_position(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Per row, the token whose head output a decoder classifier returns: the rightmost one that is not
    padding (``*ForSequenceClassification``'s rule, for left and right padding alike)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    pad = config.pad_token_id
    ids = input_ids.cpu()
    if pad is None:
        return torch.full((ids.shape[0],), ids.shape[1] - 1)
    return (torch.arange(ids.shape[1]) * (ids != pad).int()).argmax(-1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1.0,
                 max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (classes, d) and bias (classes,) minimising ``sum CE(xW^T + b, y) + l2/2 |W|^2`` (float64 L-BFGS)."""
    x64, n = x.double(), x.shape[0]
    w = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        # divided by n so the tolerances do not depend on how many examples there are
        loss = (torch.nn.functional.cross_entropy(x64 @ w.T + b, y, reduction="sum") + 0.5 * l2 * (w * w).sum()) / n
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def add_bias(layer: torch.nn.Linear) -> None:
    """Give a bias-free linear layer a zero bias (a decoder classifier's ``score`` has none, and a fitted
    head needs one for the class balance and for folding standardised features in)."""
    if layer.bias is None:
        layer.bias = torch.nn.Parameter(torch.zeros(layer.out_features, dtype=layer.weight.dtype,
                                                    device=layer.weight.device))


def linear_probe_head(model, objective, examples: list[dict], *, batch_size: int = 32, device="cpu",
                      l2: float = 1.0, standardize: bool = False) -> dict:
    """Fit the head of ``model`` on ``examples`` (see the module docstring) and write it in place.

    ``l2``: the weight of the L2 penalty (scikit-learn's ``1 / C``). ``standardize``: fit on features
    shifted and scaled by the training rows' mean and standard deviation, then fold both into the head's
    weight and bias, so that ``l2`` penalises every feature alike whatever its scale (a decoder's last
    hidden state has a few very large coordinates). A head without a bias gets one (:func:`add_bias`).

    Returns ``{"layer", "examples", "train_accuracy", "weight", "bias"}`` (the values written, as lists,
    so a seed log can restore exactly this head)."""
    if not examples:
        raise UserError("model.head_init=linear_probe needs training examples; the training split is empty")
    if not l2 > 0:
        raise UserError(f"model.head_l2={l2}: the probe's L2 weight must be > 0")
    name, layer = head_layer(model)
    x, y = head_features(model, objective, examples, batch_size, device)
    classes = layer.out_features
    if int(y.max()) >= classes:
        raise UserError(f"model.head_init=linear_probe: target {int(y.max())} but the head has {classes} outputs")
    x = x.double()
    if standardize:
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
        w, b = fit_logistic((x - mu) / sd, y, classes, l2)
        w = w / sd
        b = b - w @ mu
    else:
        w, b = fit_logistic(x, y, classes, l2)
    add_bias(layer)
    with torch.no_grad():
        layer.weight.copy_(w.to(layer.weight.dtype))
        layer.bias.copy_(b.to(layer.bias.dtype))
    acc = float(((x @ w.T + b).argmax(-1) == y).double().mean())
    return {"layer": name, "examples": len(examples), "train_accuracy": acc,
            "weight": layer.weight.detach().float().cpu().tolist(),
            "bias": layer.bias.detach().float().cpu().tolist()}


def restore_head(model, saved: dict) -> None:
    """Write a head saved by :func:`linear_probe_head` (a seed log's ``model.head``) back into ``model``."""
    name, layer = head_layer(model)
    if saved.get("layer") != name:
        raise UserError(f"the seed log's head is {saved.get('layer')!r} but this model's is {name!r}")
    weight = torch.tensor(saved["weight"], dtype=layer.weight.dtype)
    if weight.shape != layer.weight.shape:
        raise UserError(f"the seed log's head has shape {tuple(weight.shape)}, the model's {tuple(layer.weight.shape)}")
    if saved.get("bias") is not None:
        add_bias(layer)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if saved.get("bias") is not None:
            layer.bias.copy_(torch.tensor(saved["bias"], dtype=layer.bias.dtype))
