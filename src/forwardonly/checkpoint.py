"""Checkpoints of fine-tuning runs, and the seed log that replays a ZO run onto its base model.

A checkpoint is a directory written atomically (a crash or a full disk leaves
the previous one whole and loadable; see :mod:`forwardonly.io`)::

    checkpoint/
      trainable.safetensors   the trainable parameters, by name
      optimizer.pt            optimizer.state_dict() (loaded with weights_only=True)
      trainer.json            step, forwards, elapsed time, metrics so far, the config
      seedlog.json            the seed log (zeroth-order runs)

The seed log
------------
A zeroth-order update is a pure function of (run seed, step, projected
gradients, learning rate): the directions are regenerated from their seeds
(:mod:`forwardonly.optim.perturb`). The log keeps, per step, the learning rate
and the projected gradients actually applied, plus the few scalars an optimizer's
update reads beyond them (FZOO's loss spread, HiZOO's curvature), a few dozen
bytes a step, and :func:`replay` rebuilds the fine-tuned weights from the base
model with it, bitwise equal to the trained ones (same device type and dtype). A
200-step run of a 135M-parameter model fits in ~20 KB instead of 540 MB.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import UserError
from .io import atomic_path, recover

FORMAT = 1


class SeedLog:
    """The per-step record of a ZO run: ``[{"step", "lr", "grads"[, "scalars"]} | {"step", "skip"}]`` plus the
    optimizer."""

    def __init__(self, optimizer: dict, model: dict, scheme: dict, entries: list | None = None):
        self.optimizer, self.model, self.scheme = optimizer, model, scheme
        self.entries: list[dict] = list(entries or [])

    def record(self, step: int, lrs: list[float], grads: list[float] | None,
               scalars: dict | None = None) -> None:
        if grads is None:
            self.entries.append({"step": step, "skip": True})
            return
        entry = {"step": step, "lr": lrs, "grads": [float(g) for g in grads]}
        if scalars:
            entry["scalars"] = {k: [float(x) for x in v] if isinstance(v, (list, tuple)) else float(v)
                                for k, v in scalars.items()}
        self.entries.append(entry)

    def truncate(self, step: int) -> None:
        """Forget entries of steps >= ``step`` (for a resumed run)."""
        self.entries = [e for e in self.entries if e["step"] < step]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "optimizer": self.optimizer, "model": self.model, "scheme": self.scheme,
                "entries": self.entries}

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path) -> SeedLog:
        from .io import read_json

        path = Path(path)
        if not path.is_file():
            raise UserError(f"seed log not found: {path}")
        data = read_json(path, "seed log")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path}: not a forwardonly seed log (format {FORMAT})")
        missing = [k for k in ("optimizer", "model", "scheme", "entries") if k not in data]
        if missing or not isinstance(data["entries"], list) or not isinstance(data["optimizer"], dict):
            raise UserError(f"{path}: incomplete seed log (missing or malformed: {', '.join(missing) or 'entries'})")
        return cls(data["optimizer"], data["model"], data["scheme"], data["entries"])


def replay(log: SeedLog, model, optimizer) -> None:
    """Apply every logged update to ``model`` through ``optimizer`` (built as in the run, fresh state)."""
    groups = optimizer.param_groups
    for e in log.entries:
        if e.get("skip"):
            optimizer.zo_state["step"] = e["step"] + 1
            continue
        for g, lr in zip(groups, e["lr"]):
            g["lr"] = lr
        optimizer.replay_update(e["step"], e["grads"], e.get("scalars"))


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (what a fine-tuning checkpoint keeps)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def all_weights(model) -> dict[str, torch.Tensor]:
    """Every parameter by name, each shared (tied) one once: a checkpoint that restores every weight of the
    model, e.g. a distributed run's."""
    return {n: p.detach() for n, p in model.named_parameters()}


def save(directory, model, optimizer, trainer: dict, seedlog: SeedLog | None = None,
         state: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint directory atomically (see the module docstring). ``state``: the trainable
    weights by name when they do not live in the parameters (a streamed model's,
    :meth:`forwardonly.lm.holders.Holder.trainable_state`); default :func:`trainable_state`."""
    from safetensors.torch import save_file

    with atomic_path(directory) as tmp:
        tmp.mkdir()
        tensors = {n: t.contiguous().cpu() for n, t in (state if state is not None else trainable_state(model)).items()}
        save_file(tensors, str(tmp / "trainable.safetensors"), metadata={"format": str(FORMAT)})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1) + "\n")
        if seedlog is not None:
            (tmp / "seedlog.json").write_text(json.dumps(seedlog.to_dict()) + "\n")


def load_trainable(directory, model, write=None) -> None:
    """Load ``trainable.safetensors`` into ``model``; every saved name must exist with the same shape.
    ``write(model, saved, source)`` puts the tensors where they live instead (a streamed model's store)."""
    from .io import load_safetensors

    path = Path(directory) / "trainable.safetensors"
    if not path.is_file():
        raise UserError(f"no checkpoint weights at {path}")
    saved = load_safetensors(path, "checkpoint")
    if write is not None:
        write(model, saved, str(path))
        return
    copy_into(model, saved, str(path))


def copy_into(model, saved: dict[str, torch.Tensor], source: str, target=None) -> None:
    """Copy ``saved`` (by parameter name) into ``model``'s parameters, or into ``target(name, param)``; a
    name the model lacks or a shape that differs is one line naming ``source``, before anything is written."""
    params = dict(model.named_parameters())
    for name, t in saved.items():
        p = params.get(name)
        if p is None or p.shape != t.shape:
            raise UserError(f"{source}: tensor {name} {tuple(t.shape)} does not match the model "
                            f"({'missing' if p is None else tuple(p.shape)}); was it trained with another "
                            f"model or scheme?")
    with torch.no_grad():
        for name, t in saved.items():
            (params[name] if target is None else target(name, params[name])).copy_(t)


def load(directory, model, optimizer=None, write=None) -> dict:
    """Restore weights and (when given) optimizer state; returns ``trainer.json`` (``write``: see
    :func:`load_trainable`)."""
    directory = Path(directory)
    recover(directory)  # a write killed between its two renames left the previous checkpoint aside
    trainer_path = directory / "trainer.json"
    if not trainer_path.is_file():
        raise UserError(f"no checkpoint in {directory} (missing trainer.json)")
    from .io import load_torch, read_json_object

    trainer = read_json_object(trainer_path, "checkpoint state")
    load_trainable(directory, model, write)
    if optimizer is None:
        return trainer
    state = load_torch(directory / "optimizer.pt", "optimizer state")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{directory / 'optimizer.pt'}: does not fit this run's optimizer ({e})") from None
    return trainer
