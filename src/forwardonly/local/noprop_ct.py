"""NoProp in continuous time: one network denoises (CT) or transports (FM) the label embedding.

Li, Teh & Pascanu 2025, "NoProp: Training Neural Networks without Back-propagation or
Forward-propagation", NoProp-CT and NoProp-FM; chosen by ``noprop.variant`` (``dt`` is
:class:`~forwardonly.local.noprop.NoProp`). Where DT trains T blocks, one per step of the chain,
these train one network ``f(x, z, t)`` that also reads a time ``t`` in [0, 1] (0: noise, 1: the
label). Every training example draws its own ``t ~ U(0, 1)`` and a latent ``z_t`` *from the label*,
so a step is one forward and backward pass of one network, whatever the number of inference steps;
no pass reads another's output, and nothing is propagated along the chain. ``noprop.blocks`` is
the number of inference steps ``T``, on the grid ``t_k = k / T``.

The network is DT's block (:class:`~forwardonly.local.noprop._Block`) with one more input: 16
Fourier features of ``t`` (``sin(k pi t), cos(k pi t)``, ``k = 1..8``) through a linear layer
added, like the image's and the latent's, before the first activation.

**NoProp-CT.** ``z_t ~ N(sqrt(a(t)) u_y, (1 - a(t)) I)`` with the fixed schedule
``a(t) = e + (1 - 2e) sin^2(pi t / 2)``, ``e = 1e-3`` (DT's cosine levels, made smooth so that
``a(0) = e``, ``a(1) = 1 - e``). The network predicts ``u_y`` as DT's blocks do,
``u(x, z, t) = softmax(f(x, z, t)) @ U``, with the paper's continuous-time loss:

    L_CT = E_{t ~ U(0,1)} [ w(t) ||u(x, z_t, t) - u_y||^2 ],   w(t) = SNR'(t) / (SNR(1) - SNR(0)),

``SNR(t) = a(t) / (1 - a(t))``: the limit of DT's ``SNR(t) - SNR(t - 1)`` weights as the blocks
merge, scaled to mean 1 over ``t`` (a constant factor, which Adam normalises away). The paper
learns the schedule; here it is fixed, and the weights it implies are 0 at ``t = 0`` and peak
close to ``t = 1``, where ``z_t`` all but shows the label: the early, noisy steps of the chain get
little training. ``noprop.weighting=uniform`` sets ``w(t) = 1``, the continuous form of what DT does
(its per-block weights are dropped, each block having its own Adam). Inference is DT's chain on the
grid: ``z_0 ~ N(0, I)``, then ``z_k = c_u u(x, z_{k-1}, t_{k-1}) + c_z z_{k-1}``, the mean of the
Gaussian posterior between levels ``a(t_{k-1})`` and ``a(t_k)``.

**NoProp-FM.** The straight path ``z_t = t u_y + (1 - t) z_0``, ``z_0 ~ N(0, I)``, moves at the
velocity ``u_y - z_0``; the network's output (as wide as the embedding) is a velocity, trained by
flow matching:

    L_FM = E_{t, z_0} [ ||f(x, z_t, t) - (u_y - z_0)||^2 ].

Inference integrates ``dz/dt = f(x, z, t)`` from ``z_0 ~ N(0, I)`` at ``t = 0`` with ``T`` Euler
steps, ``z <- z + f(x, z, t_k) / T``, to ``z_1``.

Both end with DT's classifier on ``z_1`` (started as the nearest class embedding) and its own
optimizer. CT trains it, as DT does, by cross-entropy on ``z_1 ~ q(z_1 | y)`` drawn from the label
(learned embeddings get their gradient there). FM trains it on the endpoint the network's velocity
points at, ``z_t + (1 - t) f(x, z_t, t)``, so that it learns on what inference hands it (the
network's output enters detached: the classifier's loss does not train the network), with ``z_t``
built from the embeddings, which learn through it. Left out: the learnable schedule, the ``z_0`` KL
term of the ELBO, and any further loss on learned embeddings.

Example::

    cfg = LocalConfig(algo="noprop", hidden=[128, 128], noprop=NoPropConfig(variant="fm", blocks=10))
    model = build_model(cfg, 64, 10); model.train_step(x, y); model.scores(x)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import LocalModel, local_step, make_optimizer
from .noprop import _Block, block_flops, label_embedding, nearest_classifier, posterior_coefficients

TIME_FEATURES = 16
EPS = 1e-3  # CT's schedule runs from signal level EPS (t = 0) to 1 - EPS (t = 1)


def time_features(t: torch.Tensor) -> torch.Tensor:
    """``(batch, 16)`` Fourier features of times ``t`` of shape ``(batch, 1)``."""
    angles = t * (math.pi * torch.arange(1, TIME_FEATURES // 2 + 1, dtype=t.dtype, device=t.device))
    return torch.cat([angles.sin(), angles.cos()], 1)


def ct_level(t: torch.Tensor) -> torch.Tensor:
    """CT's signal level ``a(t) = e + (1 - 2e) sin^2(pi t / 2)``."""
    return EPS + (1 - 2 * EPS) * torch.sin(math.pi / 2 * t) ** 2


def ct_weight(t: torch.Tensor) -> torch.Tensor:
    """``SNR'(t) / (SNR(1) - SNR(0))``: the loss weight of time ``t``, mean 1 over ``t ~ U(0, 1)``."""
    a = ct_level(t)
    slope = (1 - 2 * EPS) * math.pi / 2 * torch.sin(math.pi * t)  # a'(t)
    span = (1 - EPS) / EPS - EPS / (1 - EPS)
    return slope / (1 - a) ** 2 / span


class _TimeNoProp(LocalModel):
    """What CT and FM share: one time-conditioned network, the embeddings, the classifier, FLOPs."""

    name = "noprop"

    def __init__(self, n_in, n_classes, cfg, shape=None):
        super().__init__(n_in, n_classes, cfg, shape)
        self.T = cfg.noprop.blocks
        self.learned = cfg.noprop.embedding == "learned"
        self.embed = label_embedding(n_classes, cfg.noprop)
        d = self.embed.shape[1]
        self.net = _Block(cfg, shape, n_in, self.out_width(), d, TIME_FEATURES)
        self.classifier = nearest_classifier(self.embed)
        head = [*self.classifier.parameters(), *([self.embed] if self.learned else [])]
        self.optimizers = [make_optimizer(self.net.parameters(), cfg), make_optimizer(head, cfg)]

    def out_width(self) -> int:
        raise NotImplementedError

    def times(self, n: int) -> torch.Tensor:
        """``(n, 1)`` training times ``t ~ U(0, 1)``, one per example, from the model's generator."""
        return torch.rand(n, 1, generator=self.gen)

    def start(self, n: int, device=None) -> torch.Tensor:
        """``z_0 ~ N(0, I)`` for inference, from a generator seeded per call (predictions are reproducible)."""
        gen = torch.Generator().manual_seed(0)
        return torch.randn(n, self.embed.shape[1], generator=gen).to(device)

    def denoise(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def scores(self, x):
        return self.classifier(self.denoise(x))

    def flops_per_example(self):
        d = self.embed.shape[1]
        net = block_flops(self.cfg, self.shape, self.n_in, d, self.out_width(), TIME_FEATURES)
        mix, head = self.mix_flops(), 2 * d * self.n_classes
        # training: one network pass per example (counted as DT counts a block's) and the classifier's step;
        # predicting: T passes, then the classifier
        return {"train": 3 * net + 2 * mix + 3 * head, "predict": self.T * (net + mix) + head}

    def mix_flops(self) -> int:
        """FLOPs after the network's output: CT's ``softmax @ U``."""
        return 0


class NoPropCT(_TimeNoProp):
    """NoProp-CT: one network predicts ``u_y`` from ``(x, z_t, t)``, trained on the SNR'-weighted loss."""

    def out_width(self) -> int:
        return self.n_classes

    def predict_embedding(self, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's estimate of ``u_y`` at times ``t`` ``(batch, 1)``: class probabilities times ``U``."""
        return F.softmax(self.net(x, z, time_features(t)), 1) @ self.embed

    def noisy(self, y: torch.Tensor, t: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """``z_t ~ q(z_t | y)`` at times ``t`` ``(batch, 1)``, drawn from the model's generator."""
        a = ct_level(t)
        eps = torch.randn(len(y), embed.shape[1], generator=self.gen)
        return a.sqrt() * embed[y] + (1 - a).sqrt() * eps

    def train_step(self, x, y):
        embed = self.embed.detach().clone()  # the regression targets of this step
        t = self.times(len(y))
        z = self.noisy(y, t, embed)
        pred = F.softmax(self.net(x, z, time_features(t)), 1) @ embed
        weight = ct_weight(t).squeeze(1) if self.cfg.noprop.weighting == "snr" else 1.0
        loss = (weight * ((pred - embed[y]) ** 2).sum(1)).mean()
        losses = [local_step(self.optimizers[0], loss)]
        z_1 = self.noisy(y, torch.ones(len(y), 1), self.embed)  # learned embeddings get their gradient here
        losses.append(local_step(self.optimizers[1], F.cross_entropy(self.classifier(z_1), y)))
        return sum(losses) / len(losses)

    def grid(self, steps: int) -> torch.Tensor:
        """Signal levels ``a(k / steps)``, ``k = 0..steps``, in float64."""
        return ct_level(torch.arange(steps + 1, dtype=torch.float64) / steps)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """``z_1`` from ``z_0 ~ N(0, I)`` through the posterior mean at each of ``steps`` (default T) grid points."""
        steps = steps or self.T
        levels = self.grid(steps)
        z = self.start(len(x), x.device)
        for k in range(1, steps + 1):
            c_u, c_z = posterior_coefficients(float(levels[k - 1]), float(levels[k]))
            t = torch.full((len(x), 1), (k - 1) / steps, device=x.device)
            z = c_u * self.predict_embedding(x, z, t) + c_z * z
        return z

    def mix_flops(self) -> int:
        return 2 * self.n_classes * self.embed.shape[1]


class NoPropFM(_TimeNoProp):
    """NoProp-FM: one network predicts the velocity ``u_y - z_0`` of the straight path at ``(x, z_t, t)``."""

    def out_width(self) -> int:
        return self.embed.shape[1]

    def path(self, y: torch.Tensor, t: torch.Tensor, z_0: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """``z_t = t u_y + (1 - t) z_0`` at times ``t`` ``(batch, 1)``."""
        return t * embed[y] + (1 - t) * z_0

    def velocity(self, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, z, time_features(t))

    def train_step(self, x, y):
        embed = self.embed.detach().clone()
        t = self.times(len(y))
        z_0 = torch.randn(len(y), embed.shape[1], generator=self.gen)
        z = self.path(y, t, z_0, embed)
        v = self.velocity(x, z, t)
        losses = [local_step(self.optimizers[0], ((v - (embed[y] - z_0)) ** 2).sum(1).mean())]
        # the endpoint the network points at, the network's output held fixed; the path from the live embeddings
        end = self.path(y, t, z_0, self.embed) + (1 - t) * v.detach()
        losses.append(local_step(self.optimizers[1], F.cross_entropy(self.classifier(end), y)))
        return sum(losses) / len(losses)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """``z_1``: ``steps`` (default T) Euler steps of ``dz/dt = f(x, z, t)`` from ``z_0 ~ N(0, I)`` at ``t = 0``."""
        steps = steps or self.T
        z = self.start(len(x), x.device)
        for k in range(steps):
            t = torch.full((len(x), 1), k / steps, device=x.device)
            z = z + self.velocity(x, z, t) / steps
        return z
