"""The configuration of a language-model fine-tuning run (``forwardonly train``).

A run is a :class:`TrainConfig`, loaded from YAML plus ``key=value``
overrides by :func:`forwardonly.config.load_config`; unknown keys fail and list
the valid ones, values are checked here, before anything is loaded or written.

Example (a shipped config, ``forwardonly configs cp lm/sentiment-smollm2-zo-lora .``)::

    # forwardonly train --config lm/sentiment-smollm2-zo-lora
    model: {name: smollm2-135m}
    scheme: {name: lora, r: 8}
    optim: {name: zo-adam, lr: 1.0e-3, eps: 1.0e-3, schedule: cosine, warmup_steps: 10}
    task: {name: sentiment, max_length: 96}
    steps: 300
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..federated.config import FederatedConfig
from ..quant.model import QuantConfig
from .baselines import BASELINES, FUSED, FOAdamConfig, FOSGDConfig


@dataclass
class OffloadConfig:
    """``model.offload``: stream the model's blocks from a slower tier (ZO2-style; :mod:`forwardonly.offload`).

    Args:
        tier: ``disk`` (a memory-mapped working copy of the weights file) or ``memory`` (host memory).
        device: where blocks compute (default: the run's ``device``).
        prefetch: bring the next block in the background.
        workdir: where the disk tier's working copy goes (default: ``out_dir/offload``, else a temporary
            directory).
    """

    tier: Literal["disk", "memory"] = "disk"
    device: str | None = None
    prefetch: bool = True
    workdir: str | None = None


@dataclass
class ModelConfig:
    """Which model, and how the run holds it (:mod:`forwardonly.lm.holders`).

    Args:
        name: a zoo name, a Hugging Face directory, a ``.gguf`` file or a hub id.
        dtype: the weights' storage dtype.
        kind: ``causal`` LM, sequence ``classifier`` (a new head), or ``auto`` (from the model).
        chunk_feedforward: run feed-forward blocks on at most this many tokens at a time in no-grad
            forwards (ZO steps, evaluation): the same results with less activation memory
            (:mod:`forwardonly.models.chunking`); 0 = off.
        quant: quantize the weights (QZO): the fields of :class:`forwardonly.quant.QuantConfig`, e.g.
            ``{bits: 4, group_size: 64}``; the checkpoint is read straight into quantized layers. Train
            the scales with ``scheme.name=scales``. ``activations: 8`` fake-quantizes the input of every
            quantized linear layer to int8 (W4A8); ``shadow: true`` keeps full-precision shadow weights
            fake-quantized in the forward instead, trained with ``scheme.name=full`` (ZeroQAT;
            :mod:`forwardonly.quant.fake`).
        offload: stream the blocks from a slower tier (:class:`OffloadConfig`:
            ``{tier: disk}``), ZO2-style; ZO-SGD only.
        precision: ``pure`` (arithmetic in ``dtype``) or ``mixed`` (``bfloat16``/``float16`` weights, fp32
            arithmetic: :class:`forwardonly.quant.mixed.MixedPrecision`).
        head_init: how a classifier's new head starts: ``random`` (the model's own initialisation, seeded
            by ``seed``) or ``linear_probe``, a logistic regression on the training examples' features
            fitted before training (:mod:`forwardonly.models.head_init`; without it zeroth-order
            fine-tuning of an encoder stalls on the majority class).
        head_l2: the linear probe's L2 weight (scikit-learn's ``1 / C``; default 1).
        head_standardize: fit the probe on standardised features (mean 0, deviation 1 over the training
            examples), folded into the head's weight and bias, so ``head_l2`` weighs every feature alike.
        pooling: what a classifier's head reads: ``default`` (the model's own pooler) or ``mean`` (the mean
            of the last hidden states over the real tokens, what sentence encoders such as all-MiniLM-L6
            were trained for; BERT-family classifiers; :mod:`forwardonly.models.pooling`).
        layers: keep only the model's first N blocks, so the head reads block N's output (through the final
            norm where the model has one) and every forward skips the blocks above it; 0 (default) keeps
            all (:mod:`forwardonly.models.truncate`). Not with ``quant`` or ``offload``.
    """

    name: str = "smollm2-135m"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    kind: Literal["auto", "causal", "classifier"] = "auto"
    chunk_feedforward: int = 0
    quant: QuantConfig | None = None
    offload: OffloadConfig | None = None
    precision: Literal["pure", "mixed"] = "pure"
    head_init: Literal["random", "linear_probe"] = "random"
    head_l2: float = 1.0
    head_standardize: bool = False
    pooling: Literal["default", "mean"] = "default"
    layers: int = 0

    def __post_init__(self):
        if not self.head_l2 > 0:
            raise ValueError(f"model.head_l2={self.head_l2} must be > 0 (the linear probe's L2 weight)")
        if self.layers < 0:
            raise ValueError(f"model.layers={self.layers} must be >= 0 (the first blocks kept; 0 = all)")
        if self.layers and (self.quant is not None or self.offload is not None):
            raise ValueError(f"model.layers={self.layers} works on a plain model only, not with model."
                             f"{'quant' if self.quant is not None else 'offload'} (use model.layers=0)")
        if self.chunk_feedforward < 0:
            raise ValueError(f"model.chunk_feedforward={self.chunk_feedforward} must be >= 0 (0 = off)")


@dataclass
class SchemeConfig:
    """What to train: ``full``, ``lora``, ``lora_svd`` (LoRA's singular values only, ESSA), ``prefix``,
    ``prompt``, ``head``, ``bitfit``, ``scales`` (the quantization scales of a ``model.quant`` model: QZO) or
    ``label_bias`` (one value per label word's logit), and its options.

    Options left at ``None`` take the scheme's defaults (LoRA ``r=8``,
    ``alpha=2r``; ``num_virtual_tokens=10``; BitFit ``norm=false``). ``freeze``: ``fnmatch`` patterns
    of parameter names kept frozen whatever the scheme (e.g. ``["model.embed_tokens.*"]``).
    """

    name: Literal["full", "lora", "lora_svd", "prefix", "prompt", "head", "bitfit", "scales", "label_bias"] = "full"
    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: list[str] | None = None
    num_virtual_tokens: int | None = None
    norm: bool | None = None
    freeze: list[str] | None = None

    def options(self) -> dict:
        keys = ("r", "alpha", "dropout", "target_modules", "num_virtual_tokens", "norm", "freeze")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


FO_OPTIMIZERS = {"fo-sgd": FOSGDConfig, "fo-adam": FOAdamConfig, **BASELINES}
"""First-order baselines (backpropagation), for comparisons only: name -> options (the option classes, and
LOMO, AdaLomo and GaLore: :mod:`forwardonly.lm.baselines`)."""


def optimizer_names() -> list[str]:
    from ..optim import OPTIMIZERS

    return [*OPTIMIZERS, *FO_OPTIMIZERS]


@dataclass
class OptimConfig:
    """The optimizer, its schedule, and that optimizer's own options.

    ``name`` is a row of ``forwardonly.optim.OPTIMIZERS`` or a first-order baseline (``fo-sgd``,
    ``fo-adam``, ``fo-lomo``, ``fo-adalomo``, ``fo-galore``). The optimizer's own options (its typed section: ``ZOSGDConfig``, ``ZOAdamConfig``,
    ...; ``forwardonly.optim.info(name).config``) are written beside ``name`` in the same mapping::

        optim: {name: zo-sgd-sparse, lr: 1e-6, eps: 1e-3, density: 0.2, schedule: cosine}

    and an option that does not belong to the chosen optimizer is an error naming it. Options left out
    take the optimizer's own defaults. ``lr`` follows ``schedule`` after ``warmup_steps`` of linear
    warm-up: ``constant``, ``linear`` (to ``min_lr_ratio * lr`` at the last step) or ``cosine``
    (likewise). ``lr: auto`` (zeroth-order optimizers) lets the optimizer measure its step size and eps
    (:mod:`forwardonly.optim.autolr`); the schedule then multiplies it. ``cfg.optim.lr`` and the like read
    the section.
    """

    name: str = "zo-sgd"
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    options: Any = None
    """The optimizer's typed section (built from the keys beside ``name``)."""

    SECTION = "options"  # config.py: a field whose keys sit beside the others, typed by ``section_type``

    @classmethod
    def section_type(cls, data: dict) -> tuple[type, str, dict]:
        """The dataclass of the options of the optimizer ``data`` names, how to call it in errors, and
        the values its name fixes (``zo-sgd-mmt``: ``momentum=0.9``)."""
        name = data.get("name", cls.name)
        if name in FO_OPTIMIZERS:
            return FO_OPTIMIZERS[name], f"optimizer {name}", {}
        from ..optim import OPTIMIZERS

        if name not in OPTIMIZERS:
            raise ValueError(f"optim.name={name!r} is not one of {optimizer_names()}")
        return OPTIMIZERS[name].config, f"optimizer {name}", dict(OPTIMIZERS[name].fixed)

    def __post_init__(self):
        if self.name not in optimizer_names():
            raise ValueError(f"optim.name={self.name!r} is not one of {optimizer_names()}")
        if self.options is None:
            section, _, fixed = self.section_type({"name": self.name})
            self.options = section(**fixed)
        lr = self.options.lr
        if not (lr == "auto" and self.zeroth_order or isinstance(lr, (int, float)) and lr >= 0):
            raise ValueError(f"optim.lr={lr!r} must be >= 0" + (" or 'auto'" if self.zeroth_order else ""))
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.zeroth_order:
            from ..optim import info

            info(self.name).validate(self.kwargs())

    def __getattr__(self, key):
        options = self.__dict__.get("options")
        if options is not None and key in {f.name for f in dataclasses.fields(options)}:
            return getattr(options, key)
        raise AttributeError(f"{type(self).__name__} ({self.__dict__.get('name')}) has no option {key!r}")

    def kwargs(self) -> dict:
        """The options as keyword arguments of the optimizer."""
        return dataclasses.asdict(self.options)

    @property
    def zeroth_order(self) -> bool:
        return self.name not in FO_OPTIMIZERS


@dataclass
class TaskConfig:
    """The task, its data, template and splits, and the objective.

    ``name`` is a built-in task (``forwardonly data list``), ``bigbench/NAME``, a task YAML, a data
    file (JSONL/CSV/parquet, split 80/10/10 with ``split_seed``), a dataset directory
    (``Dataset.save_to_disk`` or a folder of data files) or a ``datasets.load_dataset`` name
    (``subset`` is its configuration). The other keys override what the task says:
    ``kind`` (``classification``, ``multiple_choice``, ``yes_no``, ``qa``, ``sft``),
    ``template.*`` (the fields of :class:`forwardonly.tasks.Template`) and ``data.SPLIT`` (a data
    file per split; for a ``datasets`` name, its ``data_files``). Only the splits a run uses must
    exist; a missing ``eval_split`` is cut from the training split (``val_fraction`` of it,
    shuffled with ``split_seed``) and the run's summary records it.

    Example (a JSONL file of ``{"text", "label"}`` rows, from the command line)::

        forwardonly train model=smollm2-135m task.kind=classification task.data.train=reviews.jsonl \\
            task.data.test=reviews-test.jsonl task.template.prompt="Review: {text}\\nSentiment:" \\
            task.template.labels=negative,positive
    """

    name: str = "sentiment"
    kind: Literal["classification", "multiple_choice", "yes_no", "qa", "sft"] | None = None
    template: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    subset: str | None = None
    objective: Literal["ce", "accuracy", "f1"] = "ce"
    max_length: int = 256
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str = "test"
    val_fraction: float = 0.1
    split_seed: int = 0
    max_train: int | None = None
    max_eval: int | None = None
    max_test: int | None = None
    # Few-shot training (MeZO's protocol): this many training examples of every class, drawn with the run's
    # ``seed`` from the training split (before ``max_train``). None: the whole split.
    shots_per_class: int | None = None

    def __post_init__(self):
        from ..tasks.task import Template

        if self.max_length < 8:
            raise ValueError(f"task.max_length={self.max_length} must be at least 8")
        for key in ("max_train", "max_eval", "max_test", "shots_per_class"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ValueError(f"task.{key}={v} must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"task.val_fraction={self.val_fraction} must be in (0, 1)")
        known = sorted(Template.__dataclass_fields__)
        for key in self.template:
            if key not in known:
                raise ValueError(f"unknown key 'task.template.{key}'; valid keys: "
                                 + ", ".join(f"task.template.{k}" for k in known))
        splits = {"train", "validation", "test", self.train_split, self.eval_split, self.test_split}
        for key, value in self.data.items():
            if key not in splits:
                raise ValueError(f"task.data.{key}: unknown split; splits are {sorted(splits)}")
            if not isinstance(value, str) or not value:
                raise ValueError(f"task.data.{key}={value!r} must be a file path")


@dataclass
class TrainConfig:
    """One fine-tuning run. ``forwardonly train --help`` and the shipped configs show every key.

    Args:
        steps: optimizer steps (each sees ``batch_size * accum_steps`` examples).
        bucket: group training examples of similar length into the same step, sorting runs of
            ``bucket`` steps' worth of examples (less padding, faster steps); 0 turns it off.
        budget_forwards: stop early once this many forward passes were spent (ZO counts
            every perturbed evaluation; first-order counts one per micro-batch).
        eval_every: evaluate on ``task.eval_split`` every N steps (0: only at the end).
        eval_before: also evaluate before training (the zero-shot number).
        test_every: also score ``task.test_split`` every N steps (0: never), for curves of the test
            metric against forward passes and time (``test_curve`` in the summary); nothing is chosen on it.
        validate: score ``task.eval_split`` before and after training (and every ``eval_every``).
        test: score ``task.test_split`` before and after training.
        save_every: write a checkpoint every N steps (0: only at the end); needs ``out_dir``.
        threads: torch intra-op threads (default: torch's choice).
        nproc: processes for distributed ZO (``torchrun`` is started for you); ``dist_mode``
            ``data`` shards each batch over ranks, ``probe`` gives each rank its own probes.
        dist_timeout_s: how long a rank waits in a collective for the others (default 300). A
            rank that hangs stops the others after this plus a roll call of ``min(5, dist_timeout_s)``
            seconds, with an error naming it; a dead one is seen at once (gloo).
        report_to: tracking backends, any of ``tensorboard``, ``wandb``, ``mlflow`` (each an extra;
            see :mod:`forwardonly.tracking`); needs ``out_dir``.
        federated: clients, rounds and split of a federated ZO run (``forwardonly federated``;
            :class:`forwardonly.federated.FederatedConfig`); ``forwardonly train`` refuses it.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    steps: int = 100
    batch_size: int = 16
    accum_steps: int = 1
    bucket: int = 8
    seed: int = 0
    budget_forwards: int | None = None
    eval_every: int = 0
    eval_before: bool = True
    test_every: int = 0
    validate: bool = True
    test: bool = True
    eval_batch_size: int = 32
    log_every: int = 10
    save_every: int = 0
    out_dir: str | None = None
    device: str = "cpu"
    threads: int | None = None
    nproc: int = 1
    dist_mode: Literal["data", "probe"] = "data"
    dist_timeout_s: float = 300.0
    report_to: list[str] = field(default_factory=list)
    federated: FederatedConfig | None = None

    def __post_init__(self):
        from ..tracking import BACKENDS

        for name in self.report_to:
            if name not in BACKENDS:
                raise ValueError(f"report_to={name!r} is not one of {list(BACKENDS)}")
        if self.report_to and not self.out_dir:
            raise ValueError(f"report_to={','.join(self.report_to)} needs out_dir (tracking files go into "
                             f"the run)")
        checks = {"steps": 0, "batch_size": 1, "bucket": 0, "accum_steps": 1, "eval_batch_size": 1, "log_every": 1,
                  "eval_every": 0, "test_every": 0, "save_every": 0, "nproc": 1}
        for key, low in checks.items():
            if getattr(self, key) < low:
                raise ValueError(f"{key}={getattr(self, key)} must be at least {low}")
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s={self.dist_timeout_s} must be > 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads} must be at least 1")
        if self.budget_forwards is not None and self.budget_forwards < 1:
            raise ValueError(f"budget_forwards={self.budget_forwards} must be at least 1")
        if self.save_every and not self.out_dir:
            raise ValueError(f"save_every={self.save_every} needs out_dir")
        paired = getattr(self.optim.options, "paired", False)  # (CMA-ES has no paired evaluation)
        if self.optim.zeroth_order and paired and self.scheme.name == "prompt":
            raise ValueError("optim.paired=true with scheme.name=prompt: PEFT's prompt tuning looks up one copy of "
                             "the prompt and repeats it over the batch, so the two halves of a paired forward "
                             "cannot see different prompts; set optim.paired=false")
        check_holding(self.model, self.scheme.name, self.optim.name)
        if self.model.offload is not None and self.nproc > 1:
            raise ValueError("model.offload streams one process's model: nproc must be 1")
        if self.optim.name in FUSED and self.accum_steps != 1:
            raise ValueError(f"optim.name={self.optim.name} updates inside backward, one micro-batch per step: "
                             f"accum_steps={self.accum_steps} must be 1")
        if self.nproc > 1 and not self.optim.zeroth_order:
            raise ValueError(f"nproc={self.nproc}: distributed training is for zeroth-order optimizers, "
                             f"not {self.optim.name}")
        if self.nproc > 1 and self.optim.zeroth_order:
            from ..optim import info

            if not info(self.optim.name).capabilities.distributes:
                raise ValueError(f"nproc={self.nproc}: optim.name={self.optim.name} runs in one process")
        if self.nproc > 1 and self.dist_mode == "data" and (self.batch_size * self.accum_steps) % self.nproc:
            raise ValueError(f"batch_size*accum_steps={self.batch_size * self.accum_steps} must be divisible "
                             f"by nproc={self.nproc} in data-parallel mode")


def check_holding(model_cfg, scheme: str, optim_name: str) -> None:
    """Reject combinations a holder cannot serve, before anything is loaded (one line naming the keys)."""
    if model_cfg.quant is not None and model_cfg.offload is not None:
        raise ValueError("model.quant and model.offload cannot be combined yet: choose one")
    if model_cfg.quant is not None and model_cfg.quant.shadow and model_cfg.precision == "mixed":
        raise ValueError("model.quant.shadow=true keeps its shadow weights in model.dtype: set model.precision=pure")
    if model_cfg.quant is not None and model_cfg.kind == "classifier":
        raise ValueError("model.quant loads causal language models; model.kind=classifier is not supported")
    if scheme == "scales" and model_cfg.quant is None:
        raise ValueError("scheme.name=scales trains the quantization scales: set model.quant (e.g. model.quant.bits=4)")
    if scheme == "scales" and model_cfg.quant.shadow:
        raise ValueError("scheme.name=scales trains stored scales; model.quant.shadow=true derives them from the "
                         "shadow weights: train those with scheme.name=full, or set model.quant.shadow=false")
    if model_cfg.offload is not None:
        if optim_name not in ("zo-sgd", "zo-sgd-sign"):
            raise ValueError(f"model.offload streams plain or sign ZO-SGD steps (optim.name=zo-sgd or zo-sgd-sign); "
                             f"got optim.name={optim_name}")
        if scheme in ("lora", "lora_svd", "prefix", "prompt", "label_bias"):
            raise ValueError(f"model.offload streams the model's own weights; scheme.name={scheme} (PEFT) is "
                             f"not supported: use full, head or bitfit")
        if model_cfg.dtype != "float32" or model_cfg.precision != "pure":
            raise ValueError("model.offload streams fp32 weights as stored: set model.dtype=float32 and "
                             "model.precision=pure")
        if model_cfg.kind == "classifier":
            raise ValueError("model.offload streams causal language models; model.kind=classifier is not supported")
    if model_cfg.precision == "mixed" and model_cfg.dtype == "float32":
        raise ValueError("model.precision=mixed keeps bfloat16/float16 weights with fp32 arithmetic: set "
                         "model.dtype=bfloat16 or float16")
