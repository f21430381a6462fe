"""The fine-tuning loop: read it top to bottom.

``run(cfg)`` loads the model and the task, marks the trainable parameters of
the scheme, builds the optimizer, and then, step by step: picks the step's
examples (a pure function of the seed and the step, so a resumed run sees the
same data), sets the learning rate of the schedule, and calls
``optimizer.step(closure)``, whose closure runs forward passes only (first-order
baselines call ``backward`` instead). It logs metrics as JSONL, evaluates
periodically, writes checkpoints atomically and keeps the seed log.

Example::

    from forwardonly.config import load_config
    from forwardonly.lm import TrainConfig, run

    cfg = load_config(TrainConfig, "configs/lm/sentiment-smollm2-zo-lora.yaml", ["steps=50"])
    summary = run(cfg)
    summary["test_after"]["accuracy"]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

from .. import checkpoint
from ..bench.measure import peak_rss_bytes
from ..config import to_dict
from ..errors import UserError
from ..io import atomic_write_text
from .config import TrainConfig
from .holders import Holder



# ----------------------------------------------------------------------------- building blocks
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
    with ``seed``), then at most ``task.max_train``."""
    from ..tasks import per_class

    train = task.splits[cfg.task.train_split]
    if cfg.task.shots_per_class is not None:
        train = per_class(train, cfg.task.shots_per_class, cfg.seed,
                          f"task '{task.name}' split {cfg.task.train_split!r}")
    train = train[: cfg.task.max_train]
    if not train:
        raise UserError(f"task '{task.name}' split {cfg.task.train_split!r} is empty")
    return train


def setup(cfg: TrainConfig, log=lambda msg: None, holder: Holder | None = None, info: dict | None = None):
    """Model (with the scheme applied), tokenizer, task, objective, trainable parameters.

    ``holder`` (default: a new :class:`~forwardonly.lm.holders.Holder` of ``cfg.model``) loads the
    model as configured (quantized, streamed, ...); attach it before running the model. With
    ``model.head_init=linear_probe`` the classifier's head is fitted on the training examples' features
    before the scheme is applied; ``info["head"]`` (when ``info`` is given) receives the fit
    (:func:`forwardonly.models.head_init.linear_probe_head`).
    """
    from ..models import apply_scheme, trainable_parameters
    from ..tasks import get_task, make_objective

    task = get_task(cfg.task.name)
    for split in (cfg.task.train_split, cfg.task.eval_split, cfg.task.test_split):
        if split not in task.splits:
            raise UserError(f"task '{task.name}' has no split {split!r}; it has {sorted(task.splits)}")
    log(f"loading {cfg.model.name} ({cfg.model.dtype}) ...")
    torch.manual_seed(cfg.seed)  # a newly initialised head (classifiers) is part of the base model: seed it
    holder = holder or Holder(cfg.model, cfg.out_dir, cfg.device)
    model, tok = holder.load(num_labels=max(2, len(task.label_names)), attn_implementation=_attention(cfg))
    if cfg.model.chunk_feedforward:
        from ..models.chunking import chunk_feedforward

        chunk_feedforward(model, tokens=cfg.model.chunk_feedforward)
    objective = make_objective(task, tok, cfg.task.objective, cfg.task.max_length, model=model)
    if cfg.model.head_init == "linear_probe":
        from ..models.head_init import linear_probe_head

        fit = linear_probe_head(model, objective, training_examples(cfg, task), batch_size=cfg.eval_batch_size,
                                device=cfg.device)
        log(f"head {fit['layer']}: linear probe on {fit['examples']} training examples "
            f"(training accuracy {fit['train_accuracy']:.4f})")
        if info is not None:
            info["head"] = fit
    model = apply_scheme(model, cfg.scheme.name, **cfg.scheme.options())
    if getattr(cfg.optim.options, "grad_checkpointing", False):
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    params = [p for _, p in trainable_parameters(model)]
    return model, tok, task, objective, params


def _names(model) -> list[str]:
    from ..models import trainable_parameters

    return [n for n, _ in trainable_parameters(model)]


def _attention(cfg) -> str | None:
    # Forward-mode AD (ForwardGrad) needs kernels with forward derivatives; PyTorch's CPU SDPA has none.
    return "eager" if cfg.optim.name == "forward-grad" else None


# ----------------------------------------------------------------------------- the loop
def run(cfg: TrainConfig, *, resume: bool = False, progress: bool = True, log=None) -> dict:
    """Fine-tune as ``cfg`` says; returns a summary (metrics before/after, time, memory, forwards)."""
    from ..distributed import distribute, init_from_env, shutdown
    from ..tasks import evaluate

    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(cfg.out_dir) if cfg.out_dir else None
    ckpt_dir = out / "checkpoint" if out else None
    if resume and (ckpt_dir is None or not (ckpt_dir / "trainer.json").is_file()):
        raise UserError(f"--resume: no checkpoint in {ckpt_dir or '(no out_dir)'}")
    if not resume and ckpt_dir is not None and ckpt_dir.exists():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another out_dir")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    comm = init_from_env() if cfg.nproc > 1 or "WORLD_SIZE" in os.environ else None
    main_rank = comm is None or comm.rank == 0
    say = log if main_rank else (lambda msg: None)

    holder, fitted = Holder(cfg.model, out, cfg.device), {}
    model, tok, task, objective, params = setup(cfg, say, holder, fitted)
    n_train = sum(p.numel() for p in params)
    say(f"{type(model).__name__}: {n_train:,} trainable of {sum(p.numel() for p in model.parameters()):,} "
        f"parameters (scheme {cfg.scheme.name})")
    opt = build_optimizer(cfg, params, _names(model))
    zo = cfg.optim.zeroth_order
    caps = opt.capabilities if zo else None
    if caps is not None and caps.takes_names:
        say(f"{len(opt.blocks)} blocks: {', '.join(opt.blocks[:3])}, ..., {opt.blocks[-1]}"
            + (f"; first-order: {', '.join(opt.fo_blocks)}" if caps.first_order else ""))
    if comm is not None and comm.world_size > 1:
        if cfg.dist_mode == "data" and (cfg.batch_size * cfg.accum_steps) % comm.world_size:
            raise UserError(f"batch_size*accum_steps={cfg.batch_size * cfg.accum_steps} is not divisible by "
                            f"the {comm.world_size} ranks of data-parallel training")
        opt = distribute(opt, comm, mode=cfg.dist_mode)
    holder.attach(model, opt if zo else None)  # streaming, mixed precision: from here on
    base_model = to_dict(cfg.model) | {"num_labels": max(2, len(task.label_names))}
    if "head" in fitted:  # the fitted head is part of the base model: a replay restores exactly it
        base_model["head"] = {k: fitted["head"][k] for k in ("layer", "weight", "bias")}
    seedlog = checkpoint.SeedLog(to_dict(cfg.optim) | {"seed": cfg.seed, "accum_steps": cfg.accum_steps},
                                 base_model, to_dict(cfg.scheme)) if zo and caps.replay else None

    train = training_examples(cfg, task)

    def score(split, limit):
        return evaluate(model, tok, task, split, batch_size=cfg.eval_batch_size, max_examples=limit,
                        device=cfg.device, progress=progress and main_rank, max_length=cfg.task.max_length)

    state = {"step": 0, "forwards": 0, "backwards": 0, "train_time_s": 0.0, "history": [], "evals": [],
             "test_curve": []}
    if resume:
        saved = checkpoint.load(ckpt_dir, model, opt, write=holder.load_trainable)
        state.update({k: saved[k] for k in state if k in saved})
        if seedlog is not None and (ckpt_dir / "seedlog.json").is_file():
            seedlog.entries = checkpoint.SeedLog.load(ckpt_dir / "seedlog.json").entries
            seedlog.truncate(state["step"])
        say(f"resumed {out} at step {state['step']}")
    elif out is not None and main_rank:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=1) + "\n")

    summary: dict = {"config": to_dict(cfg), "trainable_parameters": n_train, "train_examples": len(train)}
    if "head" in fitted:
        summary["head_init"] = {k: fitted["head"][k] for k in ("layer", "examples", "train_accuracy")}
    if cfg.eval_before and not resume:
        if cfg.test:
            summary["test_before"] = score(cfg.task.test_split, cfg.task.max_test)
            say(f"before: {cfg.task.test_split} {_fmt(summary['test_before'])}")
        if cfg.validate:
            state["evals"].append({**_point(state), **score(cfg.task.eval_split, cfg.task.max_eval)})
            say(f"step 0: {cfg.task.eval_split} {_fmt(state['evals'][-1])}")

    per_step = cfg.batch_size * cfg.accum_steps
    metrics_path = out / "metrics.jsonl" if out and main_rank else None
    if metrics_path is not None:
        kept = [r for r in _read_jsonl(metrics_path) if r.get("step", 0) <= state["step"]] if resume else []
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    bar = None
    if progress and main_rank:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=state["step"], desc="train", unit="step", dynamic_ncols=True)
    model.train(not zo)  # ZO: eval mode, so dropout cannot make the two perturbed losses differ by noise
    recent: list[float] = []
    try:
        while state["step"] < cfg.steps:
            t = state["step"]
            if cfg.budget_forwards is not None and state["forwards"] >= cfg.budget_forwards:
                say(f"forward budget {cfg.budget_forwards} spent at step {t}")
                break
            examples = step_examples(train, cfg.seed, t, per_step, cfg.bucket)
            if comm is not None and comm.world_size > 1 and cfg.dist_mode == "data":
                examples = comm.shard(examples)
            micro = len(examples) // cfg.accum_steps
            batches = [objective.batch(examples[i * micro:(i + 1) * micro], cfg.device)
                       for i in range(cfg.accum_steps)]
            lr = lr_at(cfg, t, cfg.steps)
            for g in opt.param_groups:  # a hybrid's first-order blocks follow the schedule from their own fo_lr
                g["lr"] = lr if "fo_lr" not in g else lr_at(cfg, t, cfg.steps, base=g["fo_lr"])
            t0 = time.perf_counter()
            if zo:
                loss = _zo_step(opt, model, objective, batches, seedlog, t)
                state["forwards"] = int(opt.zo_state["forwards"])
                state["backwards"] = int(opt.zo_state.get("backwards", 0))  # a hybrid's first-order part
            else:
                loss = _fo_step(opt, model, objective, batches)
                state["forwards"] += len(batches)
                state["backwards"] += len(batches)
            state["train_time_s"] += time.perf_counter() - t0
            state["step"] = t + 1
            if math.isfinite(loss):
                recent.append(loss)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
                row = {"step": state["step"], "loss": sum(recent) / len(recent) if recent else float("nan"),
                       "lr": lr, "forwards": state["forwards"], "train_time_s": round(state["train_time_s"], 3)}
                recent = []
                state["history"].append(row)
                if metrics_path is not None:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
            if cfg.validate and cfg.eval_every and state["step"] % cfg.eval_every == 0 and state["step"] < cfg.steps:
                state["evals"].append({**_point(state), **score(cfg.task.eval_split, cfg.task.max_eval)})
                say(f"step {state['step']}: {cfg.task.eval_split} {_fmt(state['evals'][-1])}")
            if cfg.test and cfg.test_every and state["step"] % cfg.test_every == 0 and state["step"] < cfg.steps:
                state["test_curve"].append({**_point(state), **score(cfg.task.test_split, cfg.task.max_test)})
            if cfg.save_every and state["step"] % cfg.save_every == 0 and main_rank:
                checkpoint.save(ckpt_dir, model, opt, _trainer_json(cfg, state), seedlog,
                                state=holder.trainable_state(model))
    finally:
        if bar is not None:
            bar.close()

    if cfg.validate:
        state["evals"].append({**_point(state), **score(cfg.task.eval_split, cfg.task.max_eval)})
        say(f"step {state['step']}: {cfg.task.eval_split} {_fmt(state['evals'][-1])}")
    if cfg.test:
        summary["test_after"] = score(cfg.task.test_split, cfg.task.max_test)
        if cfg.test_every:
            state["test_curve"].append({**_point(state), **summary["test_after"]})
        say(f"after: {cfg.task.test_split} {_fmt(summary['test_after'])}")
    if out is not None and main_rank:
        checkpoint.save(ckpt_dir, model, opt, _trainer_json(cfg, state), seedlog, state=holder.trainable_state(model))
        if seedlog is not None:
            seedlog.save(out / "seedlog.json")
    summary.update({k: state[k] for k in ("step", "forwards", "backwards", "train_time_s", "history", "evals")})
    if cfg.test_every:
        summary["test_curve"] = state["test_curve"]
    summary["peak_rss_bytes"] = peak_rss_bytes()
    if zo:
        summary["skipped_steps"] = int(opt.zo_state["skipped"])
    if comm is not None:
        summary["world_size"] = comm.world_size
        summary["bytes_sent_per_rank"] = comm.bytes_sent
        shutdown()
    if out is not None and main_rank:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    holder.detach()
    summary["model"], summary["tokenizer"] = model, tok
    return summary


def _zo_step(opt, model, objective, batches, seedlog, t: int) -> float:
    skipped = opt.zo_state["skipped"]
    lossf = objective.paired_loss if opt.paired else objective.loss
    if len(batches) == 1:
        (b,) = batches
        loss = float(opt.step(lambda: lossf(model, b)))
    else:
        loss = float(opt.step(lambda i: lossf(model, batches[i])))
    if seedlog is not None:
        if opt.zo_state["skipped"] != skipped:
            seedlog.record(t, [], None)
        else:
            grads = list(opt.zo_state["last_grads"])
            choice = opt.zo_state.get("cons_choice", 1.0)  # ZO-SGD-Cons: which candidate it kept
            if choice == 0.0:
                seedlog.record(t, [], None)
            else:
                seedlog.record(t, [g["lr"] for g in opt.param_groups], [choice * g for g in grads])
    return loss


def _fo_step(opt, model, objective, batches) -> float:
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for b in batches:
        loss = objective.loss(model, b) / len(batches)
        loss.backward()
        total += float(loss.detach())
    opt.step()
    return total


def _point(state) -> dict:
    """Where a run is, for a point of a curve: step, forward passes and training time so far."""
    return {"step": state["step"], "forwards": state["forwards"], "train_time_s": round(state["train_time_s"], 3)}


def _trainer_json(cfg, state) -> dict:
    return {"config": to_dict(cfg), **{k: state[k] for k in state}}


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k != "step")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    # None meant "the optimizer's default" in logs written before optimizers had typed sections
    optim = {k: v for k, v in log.optimizer.items() if k not in ("seed", "accum_steps") and v is not None}
    optim = _known_options(optim)
    model_cfg = {k: v for k, v in log.model.items() if k not in ("num_labels", "head")}
    cfg = load_config(TrainConfig, None, None, base={"model": model_cfg, "scheme": log.scheme, "optim": optim,
                                                      "seed": log.optimizer["seed"]})
    torch.manual_seed(cfg.seed)  # as in setup(): the same newly initialised head, if any
    # the updates are replayed in memory (a streamed run's base model is loaded whole)
    holder = Holder(dataclasses.replace(cfg.model, offload=None), None, device)
    model, tok = holder.load(num_labels=int(log.model.get("num_labels", 2)), attn_implementation=_attention(cfg))
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
