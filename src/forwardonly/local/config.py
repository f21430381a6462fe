"""Typed config of a forward-only training run (``forwardonly local train``).

Loaded with :func:`forwardonly.config.load_config`: YAML plus ``key=value``
overrides, unknown keys rejected, bad values named with file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ALGOS = ("ff", "mf", "cafo", "dfa", "drtp", "fg", "bp", "tpsgd", "noprop")

# what a method's option must be (the words of its error message) -> when a value breaks it
_BROKEN = {
    "positive": lambda v: v <= 0,
    ">= 0": lambda v: v < 0,
    ">= 1": lambda v: v < 1,
    "in [0, 1)": lambda v: not 0.0 <= v < 1.0,
}


def _check(name: str, section, **rules: str) -> None:
    """Raise ``ValueError("NAME.KEY must be RULE, got VALUE")`` for the first option of a method's section
    (``name``: its key in :class:`LocalConfig`) that breaks its rule (a key of ``_BROKEN``)."""
    for key, rule in rules.items():
        value = getattr(section, key)
        if _BROKEN[rule](value):
            raise ValueError(f"{name}.{key} must be {rule}, got {value}")


@dataclass
class FFConfig:
    """Forward-Forward (Hinton 2022).

    loss: ``hinton`` (softplus around ``threshold``) or ``symba`` (softplus of
    ``alpha * (g_neg - g_pos)``, Lee & Song 2023: same goodness, faster to train), or
    ``softmax``: each layer runs every label and takes the cross-entropy of
    ``alpha * goodness`` over the labels, the quantity goodness prediction takes the
    argmax of (all wrong labels are the negatives; ``negatives`` and ``n_negatives``
    are not used; one pass per class instead of 1 + ``n_negatives``).
    predict: ``goodness`` (sum of goodness over layers for each candidate label),
    ``probe`` (linear classifier on the activations with a neutral label) or
    ``combined`` (the sum of the two log-probabilities, goodness scaled by ``alpha``).
    label_scale: value of the one-hot label appended to the input.
    norm: how a layer's output is normalised before the next layer (and the probe)
    sees it: ``length`` (unit L2 norm) or ``rms`` (unit root-mean-square, i.e.
    length sqrt(width), as in Hinton's reference code: the next layer's inputs keep
    the scale of a standardised input, so its goodness starts on the same scale).
    negatives: ``random`` (a uniformly drawn wrong label) or ``hard`` (a wrong label
    drawn from the model's own predictions, as in Hinton's supervised FF: the linear
    probe's softmax with the true label masked out; one extra no-grad pass per batch).
    n_negatives: wrong labels per example (distinct, drawn the same way); each layer
    compares the positive's goodness with every one of them. Costs one more forward
    and backward pass per extra negative.
    peer: weight of peer normalisation (Hinton 2022, section 3.3; 0 turns it off):
    each layer keeps a running mean of every unit's activity on positive data
    (momentum ``peer_momentum``, gradient through the current batch's share) and adds
    ``peer * mean_j (m_j - mean(m))**2`` to its loss, pulling units that are always
    off, or always on, towards the layer's average activity.
    collab: layer collaboration (Lorberbom et al. 2023, "Layer Collaboration in the
    Forward-Forward Algorithm"): each layer's loss scores the goodness summed over
    all layers, the quantity goodness prediction ranks labels by, with the other
    layers' goodness taken from a no-grad pass before the step and held constant.
    Gradients stay local (each layer still learns from its own goodness only); costs
    one more forward pass per positive and negative, no backward.
    dropout: during training, each input unit of every layer (pixels and the units of
    the normalised layer below; never the label) is zeroed with this probability and
    the rest scaled by ``1 / (1 - dropout)``. A positive and its negatives share the
    mask, so their goodness still differs by the label only. Not used for drawing
    hard negatives, training the probe, or predicting.
    """

    loss: Literal["hinton", "symba", "softmax"] = "symba"
    threshold: float = 2.0
    alpha: float = 4.0
    predict: Literal["goodness", "probe", "combined"] = "goodness"
    label_scale: float = 1.0
    probe_lr: float = 1e-3
    negatives: Literal["random", "hard"] = "random"
    norm: Literal["length", "rms"] = "length"
    n_negatives: int = 1
    peer: float = 0.0
    peer_momentum: float = 0.9
    collab: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        _check("ff", self, n_negatives=">= 1", peer=">= 0", peer_momentum="in [0, 1)", alpha="positive",
               dropout="in [0, 1)", label_scale="positive")


@dataclass
class CaFoConfig:
    """Cascaded Forward (Zhao et al. 2023): blocks in a cascade, one predictor each.

    predictor: ``closed_form`` (ridge regression onto one-hot targets, solved from
    streamed sufficient statistics), ``ce`` (cross-entropy by gradient) or ``mse``
    (squared error to the one-hot target by gradient), each predictor on its own.
    blocks: ``random`` (frozen at initialisation: the paper's Rand-CaFo) or ``dfa``
    (the paper's DFA-CaFo: each block learns from its own predictor's error, sent to
    the block's output through a fixed random matrix, one block's graph at a time).
    """

    predictor: Literal["closed_form", "ce", "mse"] = "closed_form"
    ridge: float = 1.0
    blocks: Literal["random", "dfa"] = "random"

    def __post_init__(self):
        _check("cafo", self, ridge="positive")
        if self.blocks == "dfa" and self.predictor == "closed_form":
            raise ValueError("cafo.blocks=dfa needs a predictor trained by gradient (cafo.predictor=ce or mse): "
                             "the error a block learns from is its predictor's, every step")


@dataclass
class TPConfig:
    """tpSGD (Lomnitz et al. 2022, "Learning with Local Gradients at the Edge").

    Each hidden layer's target is a fixed random projection of the one-hot label,
    ``P_k onehot(y)`` (entries ~ U(-scale, scale)), shaped like the layer's output (a conv
    block's whole C x H x W map); the layer minimises ``loss`` between its output and that
    target with its own optimizer. The output layer learns by cross-entropy.
    loss: ``mse``, ``l1`` (the paper's sign variant) or ``smooth_l1``.
    conv_target: a conv block's target is a random ``map`` (one value per channel and pixel)
    or one value per ``channel``, the same at every pixel (a target a translation-equivariant
    layer can meet everywhere).
    """

    loss: Literal["mse", "l1", "smooth_l1"] = "mse"
    scale: float = 1.0
    conv_target: Literal["map", "channel"] = "map"

    def __post_init__(self):
        _check("tp", self, scale="positive")


NOPROP_VARIANTS = ("dt", "ct", "fm")


@dataclass
class NoPropConfig:
    """NoProp (Li, Teh & Pascanu 2025, "NoProp: Training Neural Networks without Back-propagation or
    Forward-propagation").

    variant: ``dt`` (discrete time), ``ct`` (continuous time) or ``fm`` (flow matching).
    blocks: T. With ``dt``, the number of denoising blocks: block t sees the image and a noisy label
    embedding ``z_{t-1} ~ N(sqrt(a_{t-1}) u_y, (1 - a_{t-1}) I)`` drawn directly from the label
    (never from block t - 1) and learns to predict ``u_y``; ``a_t`` follows a cosine schedule
    from ``a_0 ~ 0`` (pure noise) to ``a_T ~ 1``. Inference runs the chain ``z_0 -> z_T`` with each
    block's prediction through the Gaussian posterior's mean, then the classifier on ``z_T``.
    With ``ct`` and ``fm`` there is one network, conditioned on a time ``t`` in [0, 1] drawn per
    example in training, and ``blocks`` is the number of steps inference takes from ``t = 0`` to
    ``t = 1`` (``ct``: DT's posterior-mean chain on that grid; ``fm``: Euler steps along the learned
    velocity); see ``noprop_ct.py``. weighting (``ct`` only): ``snr``, the paper's weight ``SNR'(t)`` of
    the denoising loss at time ``t`` (here with a fixed schedule; the paper learns it), or ``uniform``,
    every ``t`` alike (what DT's blocks, one optimizer each, amount to). embedding: ``onehot`` (fixed ``u_y``) or ``learned`` (class
    embeddings of width ``embed_dim``, trained with the output classifier).
    """

    variant: Literal["dt", "ct", "fm"] = "dt"
    blocks: int = 10
    embedding: Literal["onehot", "learned"] = "onehot"
    embed_dim: int = 0  # learned embeddings: their width (0: the number of classes)
    weighting: Literal["snr", "uniform"] = "snr"

    def __post_init__(self):
        if self.variant not in NOPROP_VARIANTS:
            raise ValueError(f"noprop.variant must be one of {', '.join(NOPROP_VARIANTS)}, got {self.variant}")
        if self.weighting not in ("snr", "uniform"):
            raise ValueError(f"noprop.weighting must be snr or uniform, got {self.weighting}")
        _check("noprop", self, blocks=">= 1", embed_dim=">= 0")


@dataclass
class FeedbackConfig:
    """DFA / DRTP: scale of the fixed random feedback matrices (entries ~ U(-s, s)/sqrt(classes))."""

    scale: float = 1.0


@dataclass
class FGConfig:
    """Forward gradient (Baydin et al. 2022).

    mode: ``weight`` perturbs all weights with one Gaussian tangent and uses the
    directional derivative of the global loss; ``local`` (local-loss-guided,
    Fournier et al. 2023) uses each layer's local-loss gradient as the tangent and
    projects the global gradient onto it with one ``jvp`` per layer.
    """

    mode: Literal["weight", "local"] = "local"


@dataclass
class LocalConfig:
    """One forward-only (or backprop baseline) training run on a flat image data set."""

    algo: Literal["ff", "mf", "cafo", "dfa", "drtp", "fg", "bp", "tpsgd", "noprop"] = "mf"
    data: Literal["fashion-mnist", "mnist", "digits", "cifar10", "cifar100"] = "fashion-mnist"
    data_dir: str | None = None
    hidden: list[int] = field(default_factory=lambda: [500, 500])
    conv: list[int] = field(default_factory=list)  # channels of 3x3 conv + 2x2 max-pool blocks before `hidden`
    activation: Literal["relu", "tanh"] = "relu"
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    lr_decay: float = 1.0  # learning rate x this after every epoch, for every optimizer of the method
    weight_decay: float = 0.0
    ema: float = 0.0  # > 0: evaluate, select and test an exponential moving average of the weights (per step)
    seed: int = 0
    threads: int = 0  # 0 leaves torch's default
    val_fraction: float = 0.1
    limit_train: int = 0
    patience: int = 3  # early stopping: epochs without a better validation accuracy
    target_acc: float | None = None  # report training seconds to this validation accuracy
    out_dir: str | None = None
    ff: FFConfig = field(default_factory=FFConfig)
    cafo: CaFoConfig = field(default_factory=CaFoConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    fg: FGConfig = field(default_factory=FGConfig)
    tp: TPConfig = field(default_factory=TPConfig)
    noprop: NoPropConfig = field(default_factory=NoPropConfig)

    def __post_init__(self):
        if any(h <= 0 for h in self.hidden) or any(c <= 0 for c in self.conv):
            raise ValueError(f"hidden={self.hidden}, conv={self.conv}: widths and channels must be positive")
        if not self.hidden and not self.conv:
            raise ValueError("hidden=[] needs conv blocks: a network needs at least one layer")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.lr <= 0:
            raise ValueError(f"Invalid learning rate: lr={self.lr}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay={self.lr_decay} must be in (0, 1]")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema={self.ema} must be in [0, 1) (0: off)")
        if self.patience < 0 or self.threads < 0 or self.limit_train < 0:
            raise ValueError("patience, threads and limit_train must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if self.target_acc is not None and not 0.0 < self.target_acc <= 1.0:
            raise ValueError(f"target_acc={self.target_acc} must be in (0, 1]")
