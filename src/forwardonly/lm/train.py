"""The fine-tuning loop: read it top to bottom.

``run(cfg)`` loads the model and the task, marks the trainable parameters of
the scheme, builds the optimizer, and then, step by step: picks the step's
examples (a pure function of the seed and the step, so a resumed run sees the
same data), sets the learning rate of the schedule, and calls
``optimizer.step(closure)``, whose closure runs forward passes only (first-order
baselines call ``backward`` instead). It logs metrics as JSONL, evaluates
periodically, writes checkpoints atomically and keeps the seed log. It ends by
writing ``final/`` with ``save_pretrained`` (:mod:`forwardonly.lm.export`).

``metrics.jsonl`` holds one row per line: training rows ``{"step", "loss", "lr",
"forwards", "train_time_s"}`` (ZO runs add ``projected_grad``, the last step's mean
over probes) and evaluation rows ``{"step", "split", "forwards", METRIC...}`` (the
test split before training at step 0 and after it at the last step). The same rows
go to the ``report_to`` trackers (:mod:`forwardonly.tracking`). Progress messages go
through the ``logging`` logger ``forwardonly``.

Example::

    from forwardonly.config import load_config
    from forwardonly.lm import TrainConfig, run

    # a shipped config copied out: forwardonly configs cp lm/sentiment-smollm2-zo-lora run.yaml
    cfg = load_config(TrainConfig, "run.yaml", ["steps=50"])
    summary = run(cfg)
    summary["test_after"]["accuracy"]
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch

from .. import checkpoint
from ..bench.measure import peak_rss_bytes
from ..config import to_dict
from ..errors import UserError
from ..io import atomic_write_text, recover
from ..tracking import check_backends, open_trackers
from .baselines import FusedBackward
from .config import TrainConfig
from .export import save_final
from .holders import Holder
from .metrics import Rows
from .setup import (
    build_optimizer,
    lr_at,
    replay_seedlog,
    setup,
    step_examples,
    trainable_names,
    training_examples,
)

__all__ = ["build_optimizer", "lr_at", "replay_seedlog", "run", "setup", "step_examples"]


logger = logging.getLogger("forwardonly")


# ----------------------------------------------------------------------------- the loop
def run(cfg: TrainConfig, *, resume: bool = False, progress: bool = True, log=None, clock=None) -> dict:
    """Fine-tune as ``cfg`` says; returns a summary (metrics before/after, time, memory, forwards).

    ``clock`` (default :func:`time.perf_counter`) times the training steps for ``train_time_s``: a caller
    that stops the process for a while can pass one that leaves the stopped seconds out."""
    if cfg.federated is not None:
        raise UserError("federated: this config is a federated run; start it with forwardonly federated")
    return _Run(cfg, resume, progress, log or logger.info, clock or time.perf_counter).run()


class _Run:
    """One ``forwardonly train`` run: everything is built in ``__init__``; :meth:`run` is the loop."""

    def __init__(self, cfg: TrainConfig, resume: bool, progress: bool, log, clock):
        from ..distributed import init_from_env

        self.cfg, self.resume, self.progress, self.clock = cfg, resume, progress, clock
        self.out = out = Path(cfg.out_dir) if cfg.out_dir else None
        self.ckpt_dir = ckpt_dir = out / "checkpoint" if out else None
        if resume and ckpt_dir is None:
            raise UserError("--resume needs out_dir (the run to continue)")
        if ckpt_dir is not None:
            recover(ckpt_dir)  # a checkpoint write killed between its renames left the previous one aside
        fresh_start = resume and not (ckpt_dir / "trainer.json").is_file()
        if fresh_start:  # killed before its first checkpoint: rerunning the same command starts it over
            self.resume = resume = False
        if not resume and ckpt_dir is not None and ckpt_dir.exists():
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another out_dir")
        check_backends(cfg.report_to)  # a missing tracking library stops the run before anything is written
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.comm = (init_from_env(timeout_s=cfg.dist_timeout_s) if cfg.nproc > 1 or "WORLD_SIZE" in os.environ
                     else None)
        self.main_rank = self.comm is None or self.comm.rank == 0
        self.say = log if self.main_rank else (lambda msg: None)
        if fresh_start:
            self.say(f"--resume: no checkpoint in {ckpt_dir} yet; starting from step 0")
        self._build()
        # Everything a resumed run needs to continue exactly, saved in trainer.json: the losses since the
        # last metrics row ("recent") and the score before training are part of it.
        self.state = {"step": 0, "forwards": 0, "backwards": 0, "train_time_s": 0.0, "history": [], "evals": [],
                      "recent": [], "test_before": None, "test_curve": []}
        self._restore_or_start()
        task = self.task
        self.summary: dict = {"config": to_dict(cfg), "trainable_parameters": self.n_train,
                              "task": {"name": task.name, "kind": task.kind,
                                       "splits": {s: len(v) for s, v in task.splits.items()},
                                       **({"cut": task.notes} if task.notes else {})},
                              "train_examples": len(self.train_set)}
        if "head" in self.fitted:
            self.summary["head_init"] = {k: self.fitted["head"][k] for k in ("layer", "examples", "train_accuracy")}
        state = self.state
        if state["test_before"] is not None:
            self.summary["test_before"] = state["test_before"]
        # A run resumed after its final checkpoint scores the end again: its final evaluation (and their
        # metrics rows) would be there twice
        at_end = resume and state["step"] >= cfg.steps
        if at_end and state["evals"] and state["evals"][-1]["step"] == state["step"]:
            state["evals"].pop()
        if at_end and state["test_curve"] and state["test_curve"][-1]["step"] == state["step"]:
            state["test_curve"].pop()
        self.rows = Rows(out / "metrics.jsonl" if out and self.main_rank else None,
                          state["step"] if resume else None,
                          open_trackers(cfg.report_to if self.main_rank else [], out, to_dict(cfg)),
                          drop_evals_at_end=at_end)

    def _build(self) -> None:
        """Model (held as configured), task, objective, optimizer (distributed), seed log, training examples."""
        from ..distributed import distribute

        cfg, say = self.cfg, self.say
        self.holder, self.fitted = Holder(cfg.model, self.out, cfg.device), {}
        self.model, self.tok, self.task, self.objective, params = setup(cfg, say, self.holder, info=self.fitted)
        self.n_train = sum(p.numel() for p in params)
        say(f"{type(self.model).__name__}: {self.n_train:,} trainable of "
            f"{sum(p.numel() for p in self.model.parameters()):,} parameters (scheme {cfg.scheme.name})")
        opt = build_optimizer(cfg, params, trainable_names(self.model))
        self.zo = cfg.optim.zeroth_order
        caps = opt.capabilities if self.zo else None
        if caps is not None and caps.takes_names:
            say(f"{len(opt.blocks)} blocks: {', '.join(opt.blocks[:3])}, ..., {opt.blocks[-1]}"
                + (f"; first-order: {', '.join(opt.fo_blocks)}" if caps.first_order else ""))
        comm = self.comm
        if comm is not None and comm.world_size > 1:
            if cfg.dist_mode == "data" and (cfg.batch_size * cfg.accum_steps) % comm.world_size:
                raise UserError(f"batch_size*accum_steps={cfg.batch_size * cfg.accum_steps} is not divisible by "
                                f"the {comm.world_size} ranks of data-parallel training")
            opt = distribute(opt, comm, mode=cfg.dist_mode)
        self.opt = opt
        self.holder.attach(self.model, opt if self.zo else None)  # streaming, mixed precision: from here on
        base_model = to_dict(cfg.model) | {"num_labels": max(2, len(self.task.label_names))}
        if "head" in self.fitted:  # the fitted head is part of the base model: a replay restores exactly it
            base_model["head"] = {k: self.fitted["head"][k] for k in ("layer", "weight", "bias")}
        self.seedlog = checkpoint.SeedLog(to_dict(cfg.optim) | {"seed": cfg.seed, "accum_steps": cfg.accum_steps},
                                          base_model, to_dict(cfg.scheme)) if self.zo and caps.replay else None
        self.train_set = training_examples(cfg, self.task)
        if not self.train_set and cfg.steps > 0:
            raise UserError(f"task '{self.task.name}' split {cfg.task.train_split!r} is empty")

    def _restore_or_start(self) -> None:
        if self.resume:
            saved = checkpoint.load(self.ckpt_dir, self.model, self.opt, write=self.holder.load_trainable)
            self.state.update({k: saved[k] for k in self.state if k in saved})
            if self.seedlog is not None and (self.ckpt_dir / "seedlog.json").is_file():
                self.seedlog.entries = checkpoint.SeedLog.load(self.ckpt_dir / "seedlog.json").entries
                self.seedlog.truncate(self.state["step"])
            self.say(f"resumed {self.out} at step {self.state['step']}")
        elif self.out is not None and self.main_rank:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(to_dict(self.cfg), indent=1) + "\n")

    # ------------------------------------------------------------------ scoring
    def score(self, split: str, limit: int | None) -> dict:
        from ..tasks import evaluate

        cfg = self.cfg
        return evaluate(self.model, self.tok, self.task, split, batch_size=cfg.eval_batch_size, max_examples=limit,
                        device=cfg.device, progress=self.progress and self.main_rank, max_length=cfg.task.max_length)

    def validate(self) -> None:
        cfg, state = self.cfg, self.state
        scores = self.score(cfg.task.eval_split, cfg.task.max_eval)
        state["evals"].append({**_point(state), **scores})
        self.rows.eval(cfg.task.eval_split, {"step": state["step"], **scores}, state["forwards"])
        self.say(f"step {state['step']}: {cfg.task.eval_split} {_fmt(state['evals'][-1])}")

    def test(self, when: str) -> None:
        cfg, state = self.cfg, self.state
        key = f"test_{when}"
        if when == "after" and state["step"] == 0 and self.summary.get("test_before") is not None:
            self.summary[key] = dict(self.summary["test_before"])  # no step taken: the weights scored before
        else:
            self.summary[key] = self.score(cfg.task.test_split, cfg.task.max_test)
        if when == "before":
            state["test_before"] = self.summary[key]  # a resumed run reports it too
        elif cfg.test_every:
            state["test_curve"].append({**_point(state), **self.summary[key]})
        step = 0 if when == "before" else state["step"]
        self.rows.eval(cfg.task.test_split, {"step": step, **self.summary[key]}, state["forwards"] if step else 0)
        self.say(f"{when}: {cfg.task.test_split} {_fmt(self.summary[key])}")

    def test_point(self) -> None:
        """A point of the test curve (``test_every``): the test split scored in the middle of the run."""
        cfg, state = self.cfg, self.state
        scores = self.score(cfg.task.test_split, cfg.task.max_test)
        state["test_curve"].append({**_point(state), **scores})
        self.rows.eval(cfg.task.test_split, {"step": state["step"], **scores}, state["forwards"])

    # ------------------------------------------------------------------- steps
    def step(self, t: int) -> tuple[float, float]:
        """Optimizer step ``t`` on its examples at its scheduled learning rate; returns ``(loss, lr)``."""
        cfg, opt, state, comm = self.cfg, self.opt, self.state, self.comm
        examples = step_examples(self.train_set, cfg.seed, t, cfg.batch_size * cfg.accum_steps, cfg.bucket)
        if comm is not None and comm.world_size > 1 and cfg.dist_mode == "data":
            examples = comm.shard(examples)
        micro = len(examples) // cfg.accum_steps
        batches = [self.objective.batch(examples[i * micro:(i + 1) * micro], cfg.device)
                   for i in range(cfg.accum_steps)]
        auto = getattr(opt, "auto", None)
        if auto is not None:  # lr: auto sets the step size itself; the schedule scales it
            auto.factor = lr_at(cfg, t, cfg.steps, base=1.0)
            auto.examples = len(self.train_set)
        else:
            lr = lr_at(cfg, t, cfg.steps)
            for g in opt.param_groups:  # a hybrid's first-order blocks follow the schedule from their own fo_lr
                g["lr"] = lr if "fo_lr" not in g else lr_at(cfg, t, cfg.steps, base=g["fo_lr"])
        t0 = self.clock()
        if self.zo:
            loss = _zo_step(opt, self.model, self.objective, batches, self.seedlog, t)
            state["forwards"] = int(opt.zo_state["forwards"])
            state["backwards"] = int(opt.zo_state.get("backwards", 0))  # a hybrid's first-order part
        else:
            loss = _fo_step(opt, self.model, self.objective, batches)
            state["forwards"] += len(batches)
            state["backwards"] += len(batches)
        state["train_time_s"] += self.clock() - t0
        state["step"] = t + 1
        return loss, opt.param_groups[0]["lr"] if auto is not None else lr

    def log_row(self, recent: list[float], lr: float) -> None:
        state, zs = self.state, self.opt.zo_state if self.zo else {}
        row = {"step": state["step"], "loss": sum(recent) / len(recent) if recent else float("nan"),
               "lr": lr, "forwards": state["forwards"], "train_time_s": round(state["train_time_s"], 3)}
        if zs.get("last_grads"):
            row["projected_grad"] = sum(zs["last_grads"]) / len(zs["last_grads"])
        state["history"].append(row)
        self.rows.train(row)

    def save(self) -> None:
        checkpoint.save(self.ckpt_dir, self.model, self.opt, _trainer_json(self.cfg, self.state), self.seedlog,
                        state=self.holder.trainable_state(self.model))

    def loop(self) -> None:
        cfg, state = self.cfg, self.state
        bar = None
        if self.progress and self.main_rank:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=state["step"], desc="train", unit="step", dynamic_ncols=True)
        self.model.train(not self.zo)  # ZO: eval mode, so dropout cannot make the two perturbed losses differ
        recent: list[float] = state["recent"]  # the losses since the last row (saved with a checkpoint)
        try:
            while state["step"] < cfg.steps:
                if cfg.budget_forwards is not None and state["forwards"] >= cfg.budget_forwards:
                    self.say(f"forward budget {cfg.budget_forwards} spent at step {state['step']}")
                    break
                loss, lr = self.step(state["step"])
                if math.isfinite(loss):
                    recent.append(loss)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
                    self.log_row(recent, lr)
                    recent.clear()
                if cfg.validate and cfg.eval_every and state["step"] % cfg.eval_every == 0 and state["step"] < cfg.steps:
                    self.validate()
                if cfg.test and cfg.test_every and state["step"] % cfg.test_every == 0 and state["step"] < cfg.steps:
                    self.test_point()
                if cfg.save_every and state["step"] % cfg.save_every == 0 and self.main_rank:
                    self.save()
        finally:
            if bar is not None:
                bar.close()

    # --------------------------------------------------------------------- run
    def run(self) -> dict:
        cfg = self.cfg
        try:
            if cfg.eval_before and not self.resume:
                if cfg.test:
                    self.test("before")
                if cfg.validate:
                    self.validate()
            self.loop()
            if cfg.validate and not (self.state["step"] == 0 and self.state["evals"]):  # else: scored at step 0
                self.validate()
            if cfg.test:
                self.test("after")
        finally:
            self.rows.close()
        return self.finish()

    def finish(self) -> dict:
        from ..distributed import shutdown

        out, state, summary = self.out, self.state, self.summary
        if self.zo and getattr(self.opt, "auto", None) is not None:  # lr: auto: write the last, tentative update
            self.opt.flush()
            _record_settled(self.opt, self.seedlog)
        if out is not None and self.main_rank:
            self.save()
            if self.seedlog is not None:
                self.seedlog.save(out / "seedlog.json")
            # a PEFT adapter, or the whole model (read from a streamed store, dequantized from quantized layers)
            summary["final"] = str(save_final(self.model, self.tok, out / "final",
                                              state_dict=self.holder.standard_state(self.model)))
        summary.update({k: state[k] for k in ("step", "forwards", "backwards", "train_time_s", "history", "evals")})
        if self.cfg.test_every:
            summary["test_curve"] = state["test_curve"]
        summary["peak_rss_bytes"] = peak_rss_bytes()
        if self.zo:
            summary["skipped_steps"] = int(self.opt.zo_state["skipped"])
            if getattr(self.opt, "auto", None) is not None:
                auto = self.opt.zo_state["auto"]
                summary["auto_lr"] = {k: auto[k] for k in ("scale", "beta", "trust", "signal", "cuts",
                                                           "rejected", "cleared", "calibrations", "extra_forwards", "calib_every")}
        if self.comm is not None:
            summary["world_size"] = self.comm.world_size
            summary["bytes_sent_per_rank"] = self.comm.bytes_sent
            shutdown()
        if out is not None and self.main_rank:
            atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
        self.holder.detach()
        summary["model"], summary["tokenizer"] = self.model, self.tok
        return summary


def _zo_step(opt, model, objective, batches, seedlog, t: int) -> float:
    skipped = opt.zo_state["skipped"]
    lossf = objective.paired_loss if opt.paired else objective.loss
    if len(batches) == 1:
        (b,) = batches
        loss = float(opt.step(lambda: lossf(model, b)))
    else:
        loss = float(opt.step(lambda i: lossf(model, batches[i])))
    if seedlog is not None and getattr(opt, "auto", None) is not None:
        _record_settled(opt, seedlog)  # lr: auto: the updates this step verified (or rejected)
    elif seedlog is not None:
        if opt.zo_state["skipped"] != skipped:
            seedlog.record(t, [], None)
        else:
            grads = list(opt.zo_state["last_grads"])
            choice = opt.zo_state.get("cons_choice", 1.0)  # ZO-SGD-Cons: which candidate it kept
            if choice == 0.0:
                seedlog.record(t, [], None)
            else:
                seedlog.record(t, [g["lr"] for g in opt.param_groups], [choice * g for g in grads],
                               opt.zo_state.get("last_scalars"))
    return loss


def _record_settled(opt, seedlog) -> None:
    if seedlog is None:
        return
    for e in opt.zo_state.pop("settled", []):
        if e.get("skip"):
            seedlog.record(e["step"], [], None)
        else:
            seedlog.record(e["step"], e["lr"], e["grads"], e.get("scalars"))


def _fo_step(opt, model, objective, batches) -> float:
    if isinstance(opt, FusedBackward):  # LOMO, AdaLomo: backward applies the update (one micro-batch)
        loss = objective.loss(model, batches[0])
        opt.backward_step(loss)
        return float(loss.detach())
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
