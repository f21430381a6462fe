"""NoProp, discrete time: every block learns to denoise the label on its own.

Li, Teh & Pascanu 2025, "NoProp: Training Neural Networks without Back-propagation or
Forward-propagation" (NoProp-DT). Each class has an embedding ``u_y`` (one-hot, or learned).
A cosine schedule gives signal levels ``0 < a_0 < a_1 < ... < a_T < 1``; the latent of level
``t`` given the label is ``z_t ~ N(sqrt(a_t) u_y, (1 - a_t) I)``.

Training: block ``t`` (``t = 1..T``) gets the image ``x`` and a ``z_{t-1}`` drawn *from the
label* at level ``t - 1`` -- never from block ``t - 1`` -- and learns to predict ``u_y`` with
squared error; its prediction is ``softmax(logits) @ U``, a mixture of the class embeddings.
Each block has its own optimizer and its graph is freed before the next block runs, so no
gradient and no activation crosses blocks. The classifier ``p(y | z_T)`` (and, with learned
embeddings, ``U``) learns by cross-entropy on ``z_T`` drawn from the label. The paper weighs
block ``t``'s loss by ``SNR(t) - SNR(t-1)``; with one Adam per block a constant factor per
block is normalised away, so it is left out. The classifier starts as ``z @ U^T`` (the
nearest class embedding) and is trained from there: from a random start, a 10 x 10 linear
layer on inputs of unit scale takes far longer to learn than the blocks (on digits, blocks
read 97-99 % right after 6 epochs while a randomly started classifier read 49 % of the chain).

Inference runs the chain: ``z_0 ~ N(0, I)`` (drawn from a generator seeded per call, so
predictions are reproducible), then for each block the mean of the Gaussian posterior
``q(z_t | z_{t-1}, u_y)`` with ``u_y`` replaced by the block's prediction, then the classifier.

A block: the image through ``conv`` blocks (if any) and the first dense layer, the noisy
embedding through a dense layer of the same width, their sum through the remaining ``hidden``
layers, then a linear layer to class logits.

NoProp-CT and NoProp-FM (``noprop.variant=ct|fm``), one time-conditioned network instead of T
blocks, are in ``noprop_ct.py`` and share this module's block, embeddings and classifier.

Example::

    model = NoProp(64, 10, LocalConfig(algo="noprop", hidden=[128, 128], noprop=NoPropConfig(blocks=4)))
    model.train_step(x, y); model.scores(x)
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .base import ConvBlock, LocalModel, conv_flops, conv_shapes, local_step, make_optimizer, numel


def cosine_levels(T: int, eps: float = 1e-3) -> torch.Tensor:
    """Signal levels ``a_0 .. a_T``: ``cos^2(pi/2 (1 - t/T))`` clipped into ``[eps, 1 - eps]``."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    return (torch.cos(math.pi / 2 * (1 - t)) ** 2).clamp(eps, 1 - eps)


def posterior_coefficients(a_prev: float, a: float) -> tuple[float, float]:
    """``(c_u, c_z)`` of the mean of ``q(z_a | z_prev, u)`` between signal levels ``a_prev < a``: ``c_u u + c_z z_prev``."""
    beta = 1 - a_prev / a  # the noise added going from level a down to level a_prev
    return math.sqrt(a) * beta / (1 - a_prev), math.sqrt(1 - beta) * (1 - a) / (1 - a_prev)


def label_embedding(n_classes: int, c) -> nn.Parameter:
    """The class embeddings ``U`` of a :class:`NoPropConfig` ``c``: one-hot (fixed) or random (learned)."""
    if c.embedding != "learned":
        return nn.Parameter(torch.eye(n_classes), requires_grad=False)
    d = c.embed_dim or n_classes
    return nn.Parameter(torch.randn(n_classes, d) / d ** 0.5)


def nearest_classifier(embed: torch.Tensor) -> nn.Linear:
    """``p(y | z)``'s linear layer, started as ``z @ U^T`` (the nearest class embedding): a clean prediction
    is then already read right."""
    classifier = nn.Linear(embed.shape[1], embed.shape[0])
    with torch.no_grad():
        classifier.weight.copy_(embed)
        classifier.bias.zero_()
    return classifier


def block_flops(cfg, shape, n_in: int, embed_dim: int, n_out: int, time_dim: int = 0) -> int:
    """2 x multiply-adds of one forward pass of a :class:`_Block`."""
    width_in = numel(conv_shapes(shape, cfg.conv)[-1]) if cfg.conv else n_in
    hidden = cfg.hidden or [width_in]
    return (sum(conv_flops(shape, cfg.conv)) if cfg.conv else 0) + 2 * (width_in + embed_dim + time_dim) * hidden[0] \
        + sum(2 * a * b for a, b in pairwise(hidden)) + 2 * hidden[-1] * n_out


class _Block(nn.Module):
    """One denoising block: (image, noisy label embedding[, time features]) -> ``n_out`` outputs (DT: class logits)."""

    def __init__(self, cfg, shape, n_in, n_out, embed_dim, time_dim=0):
        super().__init__()
        self.act = {"relu": torch.relu, "tanh": torch.tanh}[cfg.activation]
        chans = [shape[0], *cfg.conv] if cfg.conv else []
        self.convs = nn.ModuleList(ConvBlock(a, b) for a, b in pairwise(chans))
        width_in = numel(conv_shapes(shape, cfg.conv)[-1]) if cfg.conv else n_in
        hidden = cfg.hidden or [width_in]
        self.x_in = nn.Linear(width_in, hidden[0])
        self.z_in = nn.Linear(embed_dim, hidden[0])
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(hidden))
        self.out = nn.Linear(hidden[-1], n_out)
        self.t_in = nn.Linear(time_dim, hidden[0], bias=False) if time_dim else None  # after the rest: DT's init stays
        self.shape = shape if cfg.conv else None

    def forward(self, x, z, t_features=None):
        if self.convs:
            x = x.view(len(x), *self.shape)
            for conv in self.convs:
                x = self.act(conv(x))
            x = x.flatten(1)
        h = self.x_in(x) + self.z_in(z)
        h = self.act(h if self.t_in is None else h + self.t_in(t_features))
        for layer in self.mlp:
            h = self.act(layer(h))
        return self.out(h)


class NoProp(LocalModel):
    """NoProp-DT: T denoising blocks trained independently, inference by their denoising chain."""

    name = "noprop"

    def __init__(self, n_in, n_classes, cfg, shape=None):
        super().__init__(n_in, n_classes, cfg, shape)
        c = cfg.noprop
        self.T = c.blocks
        self.learned = c.embedding == "learned"
        self.embed = label_embedding(n_classes, c)
        d = self.embed.shape[1]
        self.register_buffer("levels", cosine_levels(self.T).float())
        self.blocks = nn.ModuleList(_Block(cfg, shape, n_in, n_classes, d) for _ in range(self.T))
        self.classifier = nearest_classifier(self.embed)
        self.optimizers = [make_optimizer(b.parameters(), cfg) for b in self.blocks]
        head = [*self.classifier.parameters(), *([self.embed] if self.learned else [])]
        self.optimizers.append(make_optimizer(head, cfg))

    def noisy(self, y: torch.Tensor, t: int, embed: torch.Tensor) -> torch.Tensor:
        """``z_t ~ q(z_t | y)``, drawn from the model's generator."""
        a = self.levels[t]
        eps = torch.randn(len(y), embed.shape[1], generator=self.gen)
        return a.sqrt() * embed[y] + (1 - a).sqrt() * eps

    def predict_embedding(self, t: int, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Block ``t`` (1-based)'s estimate of ``u_y``: its class probabilities times the embeddings."""
        return F.softmax(self.blocks[t - 1](x, z), 1) @ self.embed

    def train_step(self, x, y):
        losses = []
        with torch.no_grad():
            embed = self.embed.detach().clone()  # every block regresses onto the same targets this step
        for t in range(1, self.T + 1):
            z = self.noisy(y, t - 1, embed)  # from the label, not from block t - 1
            pred = F.softmax(self.blocks[t - 1](x, z), 1) @ embed
            losses.append(local_step(self.optimizers[t - 1], F.mse_loss(pred, embed[y], reduction="sum") / len(y)))
        a = self.levels[self.T]
        eps = torch.randn(len(y), embed.shape[1], generator=self.gen)
        z_T = a.sqrt() * self.embed[y] + (1 - a).sqrt() * eps  # learned embeddings get their gradient here
        losses.append(local_step(self.optimizers[-1], F.cross_entropy(self.classifier(z_T), y)))
        return sum(losses) / len(losses)

    def posterior_coefficients(self, t: int) -> tuple[float, float]:
        """``(c_u, c_z)`` of the mean of ``q(z_t | z_{t-1}, u)``: ``c_u u + c_z z_{t-1}``."""
        return posterior_coefficients(float(self.levels[t - 1]), float(self.levels[t]))

    @torch.no_grad()
    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """``z_T`` from ``z_0 ~ N(0, I)`` through every block's posterior mean."""
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(len(x), self.embed.shape[1], generator=gen).to(x.device)
        for t in range(1, self.T + 1):
            c_u, c_z = self.posterior_coefficients(t)
            z = c_u * self.predict_embedding(t, x, z) + c_z * z
        return z

    @torch.no_grad()
    def scores(self, x):
        return self.classifier(self.denoise(x))

    def flops_per_example(self):
        d = self.embed.shape[1]
        block = block_flops(self.cfg, self.shape, self.n_in, d, self.n_classes)
        embed = 2 * self.n_classes * d
        # each block: forward + weight gradients (its input gradient stops at x and z); the classifier
        return {"train": self.T * (3 * block + 2 * embed) + 3 * 2 * d * self.n_classes,
                "predict": self.T * (block + embed) + 2 * d * self.n_classes}
