"""``ZOTrainer``: zeroth-order steps inside the Hugging Face ``Trainer``, nothing forked.

``training_step``, ``create_optimizer`` and ``log`` are overridden (and the
gradient-norm hooks, since a ZO step leaves no gradients to clip or measure).
The Trainer keeps its loop, data loading, evaluation, checkpoint saving and LR
scheduler; its ``optimizer.step()`` is a no-op because the ZO step has already
happened inside ``training_step`` (forward passes only, no ``backward``).

Gradient accumulation: the micro-batches of one accumulation window are kept
and the step evaluates all of them under the same perturbation direction, the
optimizer's ``accum_steps`` (so its forward count is the true one).

Several processes (``torchrun``/``accelerate launch``, data-parallel): the ZO
optimizer is made to agree over the process group the Trainer set up with
:func:`forwardonly.distributed.distribute` (``mode="data"``): every rank
evaluates the same directions on its own shard and the losses are averaged
(``zo_reduce="losses"``, 8 bytes per evaluation: N ranks with accumulation
``a`` end bitwise equal to one process with ``N * a``), so the ranks keep
identical weights. Sharded set-ups (FSDP, DeepSpeed, tensor parallelism) and
single-process ``nn.DataParallel`` are refused with an error.

Logged with the loss: ``projected_grad`` (the last step's projected gradient,
mean over probes; where a first-order trainer logs ``grad_norm``) and
``forwards`` (forward passes so far, all ranks together).

Works with PEFT models (only parameters with ``requires_grad`` are trained), and with models held by a
:class:`forwardonly.lm.holders.Holder` (``holder=``: quantized, streamed from a slower tier, or in mixed
precision), which the trainer attaches when it creates the ZO optimizer and detaches when training ends.

Example::

    from transformers import TrainingArguments
    from forwardonly.hf import ZOTrainer

    args = TrainingArguments("out", learning_rate=1e-6, per_device_train_batch_size=16, max_steps=1000,
                             lr_scheduler_type="constant", report_to=[])
    trainer = ZOTrainer(model=model, args=args, train_dataset=ds, zo_optimizer="zo-sgd",
                        zo_kwargs={"eps": 1e-3})
    trainer.train()
"""

from __future__ import annotations

import torch

from .errors import require
from .optim import ZOOptimizer

Trainer = require("transformers", "forwardonly.hf").Trainer


class _Deferred(torch.optim.Optimizer):
    """What the Trainer sees as its optimizer: the ZO optimizer's own parameter groups (so the
    Trainer's LR scheduler drives the ZO learning rate) and a ``step`` that does nothing."""

    def __init__(self, zo: ZOOptimizer):
        super().__init__(zo.param_groups, zo.defaults)  # the same group dicts, not copies
        self.zo = zo
        self.state = zo.state

    def step(self, closure=None):
        return None

    def zero_grad(self, set_to_none: bool = True):
        return None

    def state_dict(self):
        return self.zo.state_dict()

    def load_state_dict(self, state_dict):
        self.zo.load_state_dict(state_dict)


class ZOTrainer(Trainer):
    """A ``transformers.Trainer`` whose training step is zeroth-order.

    Args:
        zo_optimizer: a name from :data:`forwardonly.optim.OPTIMIZERS` (default ``"zo-sgd"``).
        zo_kwargs: keyword arguments of that optimizer, e.g. ``{"eps": 1e-3, "q": 1}``. ``lr``,
            ``weight_decay`` and ``seed`` default to ``args.learning_rate``, ``args.weight_decay`` and
            ``args.seed``; given here they win (``{"lr": "auto"}``: the optimizer sets its own step size,
            :mod:`forwardonly.optim.autolr`, and the Trainer's scheduler has no say).
            ``accum_steps`` is ``args.gradient_accumulation_steps``.
        zo_reduce: with several processes, ``"losses"`` (default: every evaluation's loss is averaged
            over ranks, the arithmetic of one process) or ``"grads"`` (one all-reduce of ``q + 1``
            values per step; equal to one process up to float64 rounding).
        holder: the :class:`~forwardonly.lm.holders.Holder` that loaded ``model`` (``holder.load()``), for a
            model held quantized, streamed or in mixed precision: attached to the ZO optimizer when it is
            created (streaming supplies its evaluator), detached at the end of :meth:`train`; a streamed
            model's saves read its weights from the store.

    All other arguments are the ``Trainer``'s; ``optimizers=(zo, scheduler)`` takes a ZO optimizer
    built by hand. ``args.max_grad_norm`` has no gradient to clip; a ZO optimizer clips its projected
    gradients with ``zo_kwargs={"clip": c}``.

    ``zo_optimizer.zo_state`` counts steps, forward passes (this rank's) and skipped (non-finite) steps.
    """

    def __init__(self, *args, zo_optimizer: str = "zo-sgd", zo_kwargs: dict | None = None,
                 zo_reduce: str = "losses", holder=None, **kwargs):
        self.holder = holder
        self.zo_name = zo_optimizer
        self.zo_kwargs = dict(zo_kwargs or {})
        if "accum_steps" in self.zo_kwargs:
            raise ValueError("ZOTrainer: set accumulation with "
                             "TrainingArguments(gradient_accumulation_steps=...), "
                             "not zo_kwargs['accum_steps']")
        from .distributed import REDUCTIONS

        if zo_reduce not in REDUCTIONS:
            raise ValueError(f"Invalid zo_reduce: {zo_reduce!r} (expected one of {REDUCTIONS})")
        self.zo_reduce = zo_reduce
        self.zo_optimizer: ZOOptimizer | None = None
        self._window: list = []
        super().__init__(*args, **kwargs)
        self._refuse_sharding()
        if self.optimizer is not None:  # optimizers=(opt, scheduler) from the caller
            if not isinstance(self.optimizer, ZOOptimizer):
                raise TypeError(f"ZOTrainer needs a zeroth-order optimizer from forwardonly.optim, got "
                                f"{type(self.optimizer).__name__}; use transformers.Trainer for it")
            self.optimizer = self._adopt(self.optimizer)

    def _refuse_sharding(self) -> None:
        """A ZO step perturbs whole parameters on every rank: sharded parameters cannot take part."""
        pc = getattr(self.accelerator, "parallelism_config", None)
        sharded = [name for name, on in (
            ("DeepSpeed", getattr(self, "is_deepspeed_enabled", False)),
            ("FSDP", getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_fsdp_xla_enabled", False)),
            ("tensor/context/sequence parallelism",
             pc is not None and any((getattr(pc, k, 1) or 1) > 1 for k in ("tp_size", "cp_size", "sp_size"))),
        ) if on]
        if sharded:
            raise ValueError(f"ZOTrainer runs data-parallel only (every rank holds the whole trainable "
                             f"weights and they agree on a few scalars per step); {sharded[0]} is not "
                             f"supported")
        if self.args.n_gpu > 1:
            raise ValueError(f"ZOTrainer: {self.args.n_gpu} GPUs in one process (nn.DataParallel) is not "
                             f"supported; launch one process per GPU with torchrun --nproc-per-node "
                             f"{self.args.n_gpu}")

    def _adopt(self, zo: ZOOptimizer) -> _Deferred:
        for g in zo.param_groups:  # a step-level option, kept in every parameter group
            g["accum_steps"] = self.args.gradient_accumulation_steps
        if self.args.world_size > 1:
            import torch.distributed as dist

            from .distributed import Comm, distribute

            if not dist.is_initialized():
                raise ValueError(f"ZOTrainer: world_size={self.args.world_size} but no torch.distributed "
                                 f"process group is initialised; launch with torchrun or accelerate launch")
            comm = Comm(timeout_s=float(self.args.ddp_timeout))
            zo = distribute(zo, comm, mode="data", reduce=self.zo_reduce)
        if self.holder is not None:
            self.holder.attach(self.model, zo)  # streaming gives the optimizer its evaluator from here on
        self.zo_optimizer = zo
        return _Deferred(zo)

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.zo_optimizer is not None:  # the last update a deferral or lr="auto" has not written yet
                self.zo_optimizer.flush()
            if self.holder is not None:
                self.holder.detach()

    def _save(self, output_dir=None, state_dict=None):
        if state_dict is None and self.holder is not None:
            # a streamed model's block weights live in the store, not in the (placeholder) parameters; a
            # quantized model's tied layers share their codes and scales: each tensor is written once
            state_dict, seen = {}, set()
            for name, t in [*self.model.named_buffers(), *self.holder.all_weights(self.model).items()]:
                key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else name
                if key not in seen:
                    seen.add(key)
                    state_dict[name] = t
        return super()._save(output_dir, state_dict=state_dict)

    def create_optimizer(self, model=None):
        from .optim import build_optimizer

        if self.optimizer is None:
            model = model or self.model
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise ValueError("ZOTrainer: the model has no trainable parameters (requires_grad=True)")
            a = self.args
            kw = {"lr": a.learning_rate, "weight_decay": a.weight_decay, "seed": a.seed, **self.zo_kwargs}
            self.optimizer = self._adopt(build_optimizer(self.zo_name, params, **kw))
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.eval()  # dropout would make the perturbed losses differ by noise
        self._window.append(self._prepare_inputs(inputs))
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        window, self._window = self._window, []
        opt = self.zo_optimizer
        for g in opt.param_groups:  # the last window of an epoch may be shorter
            g["accum_steps"] = len(window)

        def one(i):
            return self.compute_loss(model, window[i])

        with torch.no_grad():
            loss = opt.step(one if len(window) > 1 else lambda: one(0))
        return torch.as_tensor(float(loss), device=self.args.device)

    # A ZO step leaves no gradients: nothing to clip, and a norm of none would be logged as 0.
    def _clip_grad_norm(self, model):
        return None

    def _get_grad_norm(self, model, grad_norm=None):
        return None

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self.zo_optimizer is not None:
            zs = self.zo_optimizer.zo_state
            grads = zs.get("last_grads") or []
            logs["projected_grad"] = sum(grads) / len(grads) if grads else float("nan")
            logs["forwards"] = int(zs["forwards"]) * self.args.world_size  # every rank evaluates as many
        super().log(logs, *args, **kwargs)
