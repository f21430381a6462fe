"""``ZOTrainer``: zeroth-order steps inside the Hugging Face ``Trainer``, nothing forked.

Only ``training_step`` and ``create_optimizer`` are overridden. The Trainer
keeps its loop, data loading, logging, evaluation, checkpoint saving and LR
scheduler; its ``optimizer.step()`` becomes a no-op because the ZO step has
already happened inside ``training_step`` (forward passes only, no
``backward``). Gradient accumulation works: the micro-batches of one
accumulation window are kept and the step evaluates all of them under the
same perturbation direction, as :class:`forwardonly.optim.ZOOptimizer` does
with ``accum_steps``.

Works with PEFT models (only parameters with ``requires_grad`` are trained).

Example::

    from transformers import TrainingArguments
    from forwardonly.hf import ZOTrainer

    args = TrainingArguments("out", learning_rate=1e-6, per_device_train_batch_size=16, max_steps=1000,
                             lr_scheduler_type="constant", report_to=[])
    trainer = ZOTrainer(model=model, args=args, train_dataset=ds, zo_optimizer="zo-sgd",
                        zo_kwargs={"eps": 1e-3, "seed": 0})
    trainer.train()
"""

from __future__ import annotations

import torch
from transformers import Trainer


class _Deferred(torch.optim.Optimizer):
    """What the Trainer sees as its optimizer: shares the ZO optimizer's parameter groups
    (so the Trainer's LR scheduler drives the ZO learning rate) and does nothing on ``step``."""

    def __init__(self, zo):
        self.zo = zo
        self.defaults = zo.defaults
        self.param_groups = zo.param_groups
        self.state = zo.state
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}

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
        zo_kwargs: keyword arguments of that optimizer besides ``lr`` (taken from
            ``args.learning_rate``) and ``weight_decay`` (``args.weight_decay``), e.g.
            ``{"eps": 1e-3, "q": 1, "seed": 0}``.

    All other arguments are the ``Trainer``'s.

    ``state["zo"]`` of :attr:`zo_optimizer` counts steps, forward passes and skipped
    (non-finite) steps.
    """

    def __init__(self, *args, zo_optimizer: str = "zo-sgd", zo_kwargs: dict | None = None, **kwargs):
        self.zo_name = zo_optimizer
        self.zo_kwargs = dict(zo_kwargs or {})
        self.zo_optimizer = None
        self._window: list = []
        super().__init__(*args, **kwargs)
        if self.args.max_grad_norm:
            self.args.max_grad_norm = 0.0  # no gradients to clip; the ZO optimizer's `clip` bounds its estimate

    def create_optimizer(self, model=None):
        from .optim import build_optimizer

        if self.optimizer is None:
            model = model or self.model
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise ValueError("ZOTrainer: the model has no trainable parameters (requires_grad=True)")
            kw = {"weight_decay": self.args.weight_decay, **self.zo_kwargs}
            self.zo_optimizer = build_optimizer(self.zo_name, params, lr=self.args.learning_rate, **kw)
            self.optimizer = _Deferred(self.zo_optimizer)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.eval()  # dropout would make the perturbed losses differ by noise
        self._window.append(self._prepare_inputs(inputs))
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        window, self._window = self._window, []

        def closure():
            losses = [self.compute_loss(model, mb) for mb in window]
            return sum(float(v) for v in losses) / len(losses)

        with torch.no_grad():
            loss = self.zo_optimizer.step(closure)
        return torch.as_tensor(float(loss), device=self.args.device)
