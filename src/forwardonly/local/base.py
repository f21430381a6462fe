"""What every forward-only method shares: layers, optimizers, evaluation, state.

A method is an :class:`torch.nn.Module` subclass of :class:`LocalModel` that
owns its optimizers and implements :meth:`LocalModel.train_step`. Memory rule
for the local methods: a layer's autograd graph is built, used and freed before
the next layer runs, and the next layer sees a detached input, so no layer keeps
another layer's activations alive. :func:`local_step` is that one-layer step.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .config import LocalConfig

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


def make_optimizer(params, cfg: LocalConfig, lr: float | None = None) -> torch.optim.Optimizer:
    params = list(params)
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


def local_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """Backward through one layer's graph, step, and free the gradients at once."""
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)  # grads of one layer at a time, never of the whole net
    return float(loss.detach())


def linear_flops(dims: list[int]) -> int:
    """Multiply-adds x2 of one forward pass through consecutive linear layers."""
    return sum(2 * a * b for a, b in pairwise(dims))


class ConvBlock(nn.Module):
    """3x3 convolution (padding 1) then 2x2 max-pooling; the activation is applied by the caller.

    Max-pooling commutes with a monotone activation (ReLU, tanh), so ``act(block(x))`` is the
    usual conv -> act -> pool block, and methods that treat a layer as ``act(layer(h))`` take it as is.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


def conv_shapes(shape: tuple[int, int, int], channels: list[int]) -> list[tuple[int, int, int]]:
    """Output (C, H, W) of each :class:`ConvBlock` in a stack that starts at ``shape``."""
    out, (c, h, w) = [], shape
    for ch in channels:
        c, h, w = ch, h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"conv={channels}: {len(out) + 1} blocks pool a {shape[1]}x{shape[2]} image to nothing")
        out.append((c, h, w))
    return out


def conv_flops(shape: tuple[int, int, int], channels: list[int]) -> list[int]:
    """2 x multiply-adds of each conv block's forward pass (3x3 kernels at full resolution)."""
    flops, (c, h, w) = [], shape
    for ch in channels:
        flops.append(2 * 9 * c * ch * h * w)
        c, h, w = ch, h // 2, w // 2
    return flops


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class LocalModel(nn.Module):
    """Base class: an MLP ``n_in -> hidden... -> (n_classes)`` trained by its own rule.

    Args:
        n_in: input features; n_classes: classes; cfg: the run's :class:`LocalConfig`;
        shape: ``(channels, height, width)`` of an input row, needed with ``cfg.conv``
        (rows stay flat in the data; :meth:`image` reshapes them for the conv blocks).

    Subclasses set ``self.optimizers`` (a list) and implement ``train_step`` and
    ``scores``; ``gen`` is the method's own random generator (negative labels,
    tangents), seeded from ``cfg.seed`` and saved with checkpoints so that a
    resumed run repeats an uninterrupted one exactly.
    """

    name = "base"

    def __init__(self, n_in: int, n_classes: int, cfg: LocalConfig, shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.n_in, self.n_classes, self.cfg = n_in, n_classes, cfg
        if cfg.conv and (shape is None or numel(shape) != n_in):
            raise ValueError(f"conv={cfg.conv} needs image data; got {n_in} features of shape {shape}")
        self.shape = shape
        # conv blocks first (each a layer of its own), then the dense layers on their flattened output
        self.conv_out = conv_shapes(shape, cfg.conv) if cfg.conv else []
        self.act = ACTIVATIONS[cfg.activation]
        self.gen = torch.Generator().manual_seed(cfg.seed + 7919)
        self.optimizers: list[torch.optim.Optimizer] = []
        self.convs = nn.ModuleList()  # conv blocks before the dense layers; methods with conv nets fill it

    @property
    def dims(self) -> list[int]:
        """Widths of the dense part: its input (the flattened last conv block, or the data), then ``hidden``."""
        return [numel(self.conv_out[-1]) if self.conv_out else self.n_in, *self.cfg.hidden]

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """Flat rows as ``(batch, C, H, W)`` images for a conv net; unchanged without conv blocks."""
        return x.view(len(x), *self.shape) if self.cfg.conv else x

    def make_convs(self, extra_in: int = 0) -> nn.ModuleList:
        """The conv blocks of ``cfg.conv``; the first takes ``extra_in`` more input channels."""
        chans = [self.shape[0] + extra_in, *self.cfg.conv] if self.cfg.conv else []
        return nn.ModuleList(ConvBlock(a, b) for a, b in pairwise(chans))

    def make_feedforward(self) -> None:
        """Build the plain network :meth:`feedforward` runs: the conv blocks of ``cfg.conv`` (``self.convs``),
        then linear layers from ``dims`` to ``n_classes`` (``self.layers``), initialised in that order."""
        self.convs = self.make_convs()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise([*self.dims, self.n_classes]))

    def feedforward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain network: conv blocks, then ``self.layers`` with the activation between, the last one linear."""
        x = self.image(x)
        for conv in self.convs:
            x = self.act(conv(x))
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)

    def conv_flops(self) -> list[int]:
        return conv_flops(self.shape, self.cfg.conv) if self.cfg.conv else []

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One update on a batch; returns the (mean local) loss."""
        raise NotImplementedError

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(batch, n_classes)``; argmax is the prediction."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Called after each training epoch (closed-form solves live here)."""

    def flops_per_example(self) -> dict:
        """Analytic FLOPs (2 x multiply-adds of the matmuls) per training and test example."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> dict:
        was = self.training
        self.eval()
        correct = sum(
            int((self.scores(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
            for i in range(0, len(y), batch_size)
        )
        self.train(was)
        return {"acc": correct / max(1, len(y))}

    def optim_state(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers], "gen": self.gen.get_state()}

    def load_optim_state(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)
        self.gen.set_state(state["gen"])


def one_hot(y: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(y, n).to(torch.float32)
