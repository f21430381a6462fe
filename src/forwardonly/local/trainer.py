"""The training loop shared by every forward-only method, readable top to bottom.

One early-stopping rule for all methods: after each epoch the model is scored on
the validation split; the best-scoring weights are kept; training stops after
``patience`` epochs without improvement or at ``epochs``. The test set is scored
once, with the best weights, and not at all with ``score_test=False`` (screens:
choices are made on validation, and the test split is never read). Time counts training steps only (not evaluation);
``time_to_target`` is the training time until validation accuracy first reaches
``target_acc``.

With ``ema > 0`` an exponential moving average of every floating-point tensor of the
model's state (updated after each step: ``avg = ema * avg + (1 - ema) * w``, starting
from the initial weights) is what is scored, kept as best and tested; training itself
continues on the raw weights. It costs one copy of the weights.

With ``out_dir`` the loop writes ``metrics.jsonl`` (one line per epoch),
``checkpoint/`` after every epoch (atomically: weights as safetensors, optimizer
and RNG state as a torch file read back with ``weights_only=True``) and
``summary.json``. ``resume=True`` continues from the checkpoint and gives the
same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from ..config import load_config, to_dict
from ..errors import UserError
from ..io import atomic_path, atomic_write_json, atomic_write_text, recover
from . import build_model
from .config import LocalConfig
from .data import Dataset, load_dataset

_CKPT = "checkpoint"


def _clone_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _EMA:
    """An exponential moving average of a model's floating-point state tensors."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model) -> None:
        current = model.state_dict()
        for k, avg in self.state.items():
            avg.mul_(self.decay).add_(current[k].detach(), alpha=1.0 - self.decay)

    def swapped(self, model):
        """Context: the model holds the averaged weights inside, its own weights again after."""
        import contextlib

        @contextlib.contextmanager
        def ctx():
            raw = _clone_state(model)
            model.load_state_dict({**raw, **self.state})
            try:
                yield
            finally:
                model.load_state_dict(raw)
        return ctx()


def save_checkpoint(path: Path, model, best: dict, progress: dict, shuffle: torch.Generator, cfg,
                    ema: _EMA | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / "best.safetensors"))
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.state.items()}, str(tmp / "ema.safetensors"))
        torch.save({"optim": model.optim_state(), "progress": progress, "shuffle": shuffle.get_state(),
                    "config": json.dumps(to_dict(cfg))}, tmp / "state.pt")


def load_checkpoint(path: Path, model, shuffle: torch.Generator, cfg, ema: _EMA | None = None) -> tuple[dict, dict]:
    """Restore ``model``, ``shuffle`` (and ``ema``) in place; return (best weights, progress)."""
    from ..io import load_safetensors, load_torch

    state = load_torch(path / "state.pt", "checkpoint state")
    weights = load_safetensors(path / "model.safetensors", "checkpoint weights")
    best = load_safetensors(path / "best.safetensors", "checkpoint weights")
    if ema is not None:
        ema.state = load_safetensors(path / "ema.safetensors", "checkpoint weights")
    try:
        model.load_state_dict(weights)
        # keys added to LocalConfig since the checkpoint was written take their defaults (the old behaviour)
        saved = to_dict(load_config(LocalConfig, base=json.loads(state["config"])))
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: cannot resume from this checkpoint: {first}") from None
    mine = to_dict(cfg)
    diff = sorted(k for k in mine if k not in ("epochs", "out_dir", "threads") and saved.get(k) != mine[k])
    if diff:
        raise UserError(f"{path}: checkpoint was made with a different config ({', '.join(diff)} differ)")
    model.load_optim_state(state["optim"])
    shuffle.set_state(state["shuffle"])
    return best, state["progress"]


def train(cfg: LocalConfig, data: Dataset | None = None, progress: bool = False, resume: bool = False,
          log=None, score_test: bool = True) -> dict:
    """Train ``cfg.algo`` on ``cfg.data``; return a summary (test accuracy of the best epoch, timings).

    Args:
        cfg: the run's config. data: preloaded data (skips :func:`load_dataset`).
        progress: show a tqdm bar per epoch. resume: continue from ``out_dir/checkpoint``.
        log: optional ``callable(str)`` for one line per epoch.
        score_test: score the best weights on the test split (default); False never touches it.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if data is None:
        data = load_dataset(cfg.data, cfg.data_dir, cfg.val_fraction, cfg.limit_train)
    model = build_model(cfg, data.n_features, data.n_classes, data.shape)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out_dir) if cfg.out_dir else None
    best = _clone_state(model)
    ema = _EMA(model, cfg.ema) if cfg.ema else None
    prog = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "bad_epochs": 0, "train_seconds": 0.0,
            "time_to_target": None, "history": []}
    if resume:
        if out is not None:
            recover(out / _CKPT)  # a save killed between its two renames left the previous checkpoint aside
        if out is None or not (out / _CKPT).is_dir():
            raise UserError(f"--resume: no checkpoint in {out / _CKPT if out else '(no out_dir set)'}")
        best, prog = load_checkpoint(out / _CKPT, model, shuffle, cfg, ema)

    for epoch in range(prog["epoch"], cfg.epochs):
        if cfg.patience and prog["bad_epochs"] >= cfg.patience:
            break
        losses, seconds = _train_epoch(model, data, cfg, shuffle, ema, progress, epoch)
        prog["train_seconds"] += seconds
        with ema.swapped(model) if ema is not None else _nothing():
            scored = model.evaluate(data.x_val, data.y_val, cfg.eval_batch_size) if len(data.y_val) else {}
            snapshot = _clone_state(model)  # the weights scored (the average, with ema)
        row = {"epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses)), "epoch_seconds": seconds,
               "train_seconds": prog["train_seconds"], **{f"val_{k}": v for k, v in scored.items()}}
        if _note_epoch(prog, row, scored.get("acc", float(epoch)), cfg.target_acc):  # no validation: last wins
            best = snapshot
        if log:
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if out is not None:
            save_checkpoint(out / _CKPT, model, best, prog, shuffle, cfg, ema)
            atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in prog["history"]))

    model.load_state_dict(best)
    summary = _summary(cfg, model, data, prog, score_test)
    if out is not None:
        atomic_write_json(out / "summary.json", {"config": to_dict(cfg), **summary})
    summary["model"] = model
    return summary


def _train_epoch(model, data: Dataset, cfg: LocalConfig, shuffle, ema, progress: bool, epoch: int):
    """One pass over the training split in a seeded order; returns (step losses, seconds of training)."""
    n, bs = len(data.y_train), cfg.batch_size
    perm = torch.randperm(n, generator=shuffle)
    bar = _bar(range(0, n, bs), progress, f"{cfg.algo} epoch {epoch + 1}/{cfg.epochs}")
    losses, t0 = [], time.perf_counter()
    model.train()
    for i in bar:
        idx = perm[i:i + bs]
        losses.append(model.train_step(data.x_train[idx], data.y_train[idx]))
        if ema is not None:
            ema.update(model)
        if progress and len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.end_epoch()
    seconds = time.perf_counter() - t0
    for opt in model.optimizers:  # saved with the optimizer state, so a resumed run continues the decay
        for group in opt.param_groups:
            group["lr"] *= cfg.lr_decay
    return losses, seconds


def _note_epoch(prog: dict, row: dict, val: float, target_acc: float | None) -> bool:
    """Add an epoch's row to ``prog`` and advance early stopping; True when this epoch is the best so far."""
    prog["history"].append(row)
    improved = val > prog["best_val"]
    if improved:
        prog.update(best_val=val, best_epoch=row["epoch"], bad_epochs=0)
    else:
        prog["bad_epochs"] += 1
    if target_acc is not None and prog["time_to_target"] is None and val >= target_acc:
        prog["time_to_target"] = prog["train_seconds"]
    prog["epoch"] = row["epoch"]
    return improved


def _summary(cfg: LocalConfig, model, data: Dataset, prog: dict, score_test: bool) -> dict:
    """The run's summary; the test split is scored here, once, with the weights already loaded (or not at all)."""
    test = model.evaluate(data.x_test, data.y_test, cfg.eval_batch_size) if score_test else {}
    epoch_times = [r["epoch_seconds"] for r in prog["history"]]
    return {
        "algo": cfg.algo, "data": cfg.data, "test_scored": score_test,
        **{f"test_{k}": v for k, v in test.items()},
        "best_val_acc": prog["best_val"], "best_epoch": prog["best_epoch"], "epochs_run": prog["epoch"],
        "seconds_per_epoch": statistics.median(epoch_times) if epoch_times else None,
        "train_seconds": prog["train_seconds"], "time_to_target": prog["time_to_target"],
        "target_acc": cfg.target_acc, "flops_per_example": model.flops_per_example(),
        "n_params": sum(p.numel() for p in model.parameters()), "history": prog["history"],
    }


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _bar(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True)
