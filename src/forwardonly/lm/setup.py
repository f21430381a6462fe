"""The building blocks of a run: its examples, its learning rate, its optimizer, its model; the seed-log replay.

:func:`setup` loads what a run trains (the model held as configured, the scheme, the task and objective),
:func:`build_optimizer` the configured optimizer, :func:`step_examples` and :func:`lr_at` what each step
sees; :func:`replay_seedlog` rebuilds a ZO run's weights from its seed log. The loop is
:mod:`forwardonly.lm.train`.
"""

from __future__ import annotations

import dataclasses
import math
import random

import torch

from .. import checkpoint
from ..errors import UserError
from .baselines import BASELINES, build_baseline
from .config import TrainConfig
from .holders import Holder


def lr_at(cfg, step: int, total: int, base: float | None = None) -> float:
    """The learning rate of ``step`` (0-based) under ``cfg.optim``'s schedule, for peak ``base`` (default ``lr``)."""
    o = cfg.optim
    peak = o.lr if base is None else base
    if o.warmup_steps and step < o.warmup_steps:
        return peak * (step + 1) / o.warmup_steps
    if o.schedule == "constant" or total <= o.warmup_steps + 1:
        return peak
    frac = (step - o.warmup_steps) / max(1, total - 1 - o.warmup_steps)
    floor = peak * o.min_lr_ratio
    if o.schedule == "linear":
        return floor + (peak - floor) * (1.0 - frac)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def step_examples(train: list, seed: int, step: int, n: int, bucket: int = 0) -> list:
    """The ``n`` training examples of ``step``: consecutive slices of seeded per-epoch permutations.

    With ``bucket > 0`` each permutation is cut into runs of ``bucket * n`` examples and each
    run is sorted by prompt length, so a step's examples have similar lengths and little of
    the batch is padding (every example is still seen once per epoch).
    """
    out, start = [], step * n
    while len(out) < n:
        epoch, offset = divmod(start + len(out), len(train))
        order = _epoch_order(train, seed, epoch, n * bucket)
        take = order[offset: offset + n - len(out)]
        out += [train[i] for i in take]
    return out


def _epoch_order(train: list, seed: int, epoch: int, run: int) -> list[int]:
    order = list(range(len(train)))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    if run > 1:
        key = [len(ex.get("prompt", "")) if isinstance(ex, dict) else 0 for ex in train]
        order = [i for s in range(0, len(order), run) for i in sorted(order[s:s + run], key=key.__getitem__)]
    return order


def build_optimizer(cfg: TrainConfig, params: list, names: list[str] | None = None):
    """The configured optimizer over ``params`` (ZO from :mod:`forwardonly.optim`, or a first-order baseline).

    ``names`` (the parameters' names) let block-wise and hybrid optimizers form one block per layer.
    """
    o = cfg.optim
    if o.name == "fo-sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "fo-adam":
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name in BASELINES:
        return build_baseline(o.name, o.options, params, names)
    from ..optim import info

    row = info(o.name)
    if names is not None and row.capabilities.takes_names:
        params = list(zip(names, params))
    try:
        return row.build(params, **o.kwargs(), seed=cfg.seed, accum_steps=cfg.accum_steps)
    except (ValueError, TypeError) as e:
        raise UserError(f"optim: {e}") from None


def training_examples(cfg: TrainConfig, task) -> list:
    """The run's training examples: the training split, ``task.shots_per_class`` of each class if set (drawn
    with ``seed``), then at most ``task.max_train``. Empty if the split was not loaded."""
    from ..tasks import per_class

    train = task.splits.get(cfg.task.train_split, [])
    if cfg.task.shots_per_class is not None and train:
        train = per_class(train, cfg.task.shots_per_class, cfg.seed,
                          f"task '{task.name}' split {cfg.task.train_split!r}")
    return train[: cfg.task.max_train]


def setup(cfg: TrainConfig, log=lambda msg: None, holder: Holder | None = None, needs: list[str] | None = None,
          info: dict | None = None):
    """Model (with the scheme applied), tokenizer, task, objective, trainable parameters.

    ``holder`` (default: a new :class:`~forwardonly.lm.holders.Holder` of ``cfg.model``) loads the
    model as configured (quantized, streamed, ...); attach it before running the model.
    ``needs``: the task splits that must exist (default: those the run uses, :func:`used_splits`; the
    training split too with a linear-probe head). With ``model.head_init=linear_probe`` the classifier's head is fitted on the training examples'
    features before the scheme is applied; ``info["head"]`` (when ``info`` is given) receives the fit
    (:func:`forwardonly.models.head_init.linear_probe_head`).
    """
    from ..models import apply_scheme, trainable_parameters
    from ..tasks import make_objective, task_for_run

    needs = used_splits(cfg) if needs is None else list(needs)
    if cfg.model.head_init == "linear_probe" and cfg.task.train_split not in needs:
        needs.append(cfg.task.train_split)  # the head is fitted on it (also when a run is evaluated or exported)
    task = task_for_run(cfg.task, needs)
    for split, note in task.notes.items():
        log(f"{split}: {note['n']} examples cut from {note['cut_from']} ({note['fraction']:g}, seed {note['seed']})")
    log(f"loading {cfg.model.name} ({cfg.model.dtype}) ...")
    torch.manual_seed(cfg.seed)  # a newly initialised head (classifiers) is part of the base model: seed it
    holder = holder or Holder(cfg.model, cfg.out_dir, cfg.device)
    model, tok = holder.load(num_labels=max(2, len(task.label_names)), attn_implementation=attention(cfg))
    if cfg.model.chunk_feedforward:
        from ..models.chunking import chunk_feedforward

        chunk_feedforward(model, tokens=cfg.model.chunk_feedforward)
    if cfg.model.head_init == "linear_probe":
        _fit_head(cfg, model, tok, task, log, info)
    model = apply_scheme(model, cfg.scheme.name, **cfg.scheme.options())
    if getattr(cfg.optim.options, "grad_checkpointing", False):
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    objective = make_objective(task, tok, cfg.task.objective, cfg.task.max_length, model=model)
    if cfg.scheme.name == "label_bias":
        _label_bias(model, objective, task)
    params = [p for _, p in trainable_parameters(model)]
    return model, tok, task, objective, params


def _label_bias(model, objective, task) -> None:
    from ..models.lowdim import attach_label_bias
    from ..tasks.objectives import LabelWords

    if not isinstance(objective, LabelWords):
        raise UserError(f"scheme.name=label_bias needs single-token label words scored by a causal LM; task "
                        f"'{task.name}' ({task.kind}) is scored otherwise")
    attach_label_bias(model, objective.label_ids.tolist())


def _fit_head(cfg: TrainConfig, model, tok, task, log, info: dict | None) -> None:
    from ..models.head_init import linear_probe_head
    from ..tasks import make_objective

    train = training_examples(cfg, task)
    if not train:
        raise UserError(f"task '{task.name}' split {cfg.task.train_split!r} is empty: "
                        "model.head_init=linear_probe has nothing to fit")
    objective = make_objective(task, tok, cfg.task.objective, cfg.task.max_length, model=model)
    fit = linear_probe_head(model, objective, train, batch_size=cfg.eval_batch_size, device=cfg.device,
                            l2=cfg.model.head_l2, standardize=cfg.model.head_standardize)
    log(f"head {fit['layer']}: linear probe on {fit['examples']} training examples "
        f"(training accuracy {fit['train_accuracy']:.4f})")
    if info is not None:
        info["head"] = fit


def used_splits(cfg: TrainConfig) -> list[str]:
    """The task splits a run reads: training (if it takes steps), validation and test (if on)."""
    t = cfg.task
    return [s for s, used in ((t.train_split, cfg.steps > 0), (t.eval_split, cfg.validate), (t.test_split, cfg.test))
            if used]


def trainable_names(model) -> list[str]:
    from ..models import trainable_parameters

    return [n for n, _ in trainable_parameters(model)]


def attention(cfg) -> str | None:
    # Forward-mode AD (ForwardGrad) needs kernels with forward derivatives; PyTorch's CPU SDPA has none.
    return "eager" if cfg.optim.name == "forward-grad" else None


def _known_options(optim: dict) -> dict:
    """``optim`` without keys its optimizer does not take (a seed log written before typed sections kept
    every optimizer's options, e.g. ``paired: false`` for a forward-gradient run)."""
    from .config import OptimConfig

    try:
        section = OptimConfig.section_type(optim)[0]
    except ValueError:
        return optim  # an unknown name: let the loader say so
    keep = {f.name for f in dataclasses.fields(OptimConfig)} | {f.name for f in dataclasses.fields(section)}
    return {k: v for k, v in optim.items() if k in keep}


def replay_seedlog(path, device: str = "cpu"):
    """Rebuild the fine-tuned ``(model, tokenizer)`` from a seed log and its base model."""
    from ..config import load_config
    from ..models import apply_scheme, trainable_parameters

    log = checkpoint.SeedLog.load(path)
    if (log.scheme or {}).get("name") == "label_bias":
        raise UserError(f"{path}: a label_bias run's bias sits on its task's label words, which a seed log does not "
                        f"name; its checkpoint holds the bias (label_bias.bias)")
    # None meant "the optimizer's default" in logs written before optimizers had typed sections
    optim = {k: v for k, v in log.optimizer.items() if k not in ("seed", "accum_steps") and v is not None}
    optim = _known_options(optim)
    model_cfg = {k: v for k, v in log.model.items() if k not in ("num_labels", "head")}
    cfg = load_config(TrainConfig, None, None, base={"model": model_cfg, "scheme": log.scheme, "optim": optim,
                                                      "seed": log.optimizer["seed"]})
    torch.manual_seed(cfg.seed)  # as in setup(): the same newly initialised head, if any
    # the updates are replayed in memory (a streamed run's base model is loaded whole)
    holder = Holder(dataclasses.replace(cfg.model, offload=None), None, device)
    model, tok = holder.load(num_labels=int(log.model.get("num_labels", 2)), attn_implementation=attention(cfg))
    if cfg.model.head_init == "linear_probe":  # the head the run started from, as fitted then
        from ..models.head_init import restore_head

        if "head" not in log.model:
            raise UserError(f"{path}: model.head_init=linear_probe but the seed log holds no fitted head")
        restore_head(model, log.model["head"])
    model = apply_scheme(model, cfg.scheme.name, **cfg.scheme.options())
    named = trainable_parameters(model)
    opt = build_optimizer(dataclasses.replace(cfg, accum_steps=1), [p for _, p in named], [n for n, _ in named])
    checkpoint.replay(log, model, opt)
    return model, tok
