"""Forward-Forward (Hinton 2022, "The Forward-Forward Algorithm: Some Preliminary Investigations").

The label is appended to the input as a scaled one-hot vector. Each layer sees
the normalised output of the layer below (unit length, or with ``norm="rms"``
unit root-mean-square; either way only its direction carries over) and learns to give high goodness ``mean(h**2)`` to positive data (the true
label) and low goodness to negative data (a wrong label: drawn uniformly, or with
``negatives="hard"`` drawn from the model's own predicted probabilities, so the
labels it confuses with the true one are the ones it learns to reject). Losses:

* ``hinton``: ``softplus(theta - g_pos) + softplus(g_neg - theta)``;
* ``symba`` (Lee & Song 2023): ``softplus(alpha * (g_neg - g_pos))``, which
  balances the two terms and converges in fewer epochs;
* ``softmax``: every label is run through each layer and the layer minimises the
  cross-entropy of ``alpha * goodness`` over the labels: all wrong labels are the
  negatives, and the loss is the one goodness prediction is scored by.

Predictions: ``goodness`` runs the net once per candidate label and picks the
label with the highest summed goodness; ``probe`` is a linear classifier trained
alongside on the normalised activations obtained with a neutral label (1/C each);
``combined`` adds the two log-probabilities, ``log_softmax(alpha * goodness) +
log_softmax(probe)`` (``alpha * goodness`` is on the scale the SymBa and softmax
losses train it to), a product of the two predictors. All three are scored on
every evaluation; ``predict`` chooses the one that early stopping and ``acc`` use.

With ``peer > 0`` each layer also keeps a running mean of its units' activity on
positive data and is pulled towards equal mean activity across units (Hinton's
peer normalisation), so no unit stays off, or on, for every input.

With ``collab`` (Lorberbom et al. 2023) each layer's loss is computed on the
goodness summed over all layers: its own, live, plus the others' from a no-grad
pass before the step. A layer then learns what the whole network's score needs
from it rather than to separate positives on its own; its gradient is still local.

Conv nets (``conv``): the label enters as ``n_classes`` constant input channels (the scaled
one-hot vector at every pixel), a conv block's goodness is the mean square over its whole
C x H x W map and normalisation is over that map; the dense layers follow on the flattened
map. Peer normalisation and dropout are MLP-only.

Example::

    model = ForwardForward(64, 10, LocalConfig(algo="ff", hidden=[128, 128]))
    model.train_step(x, y); model.evaluate(x, y)   # {"acc", "acc_goodness", "acc_probe"}
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .base import LocalModel, conv_flops, linear_flops, local_step, make_optimizer, numel


def goodness(h: torch.Tensor) -> torch.Tensor:
    return h.flatten(1).square().mean(1)


def _normalise(h: torch.Tensor, rms: bool = False) -> torch.Tensor:
    flat = h.flatten(1)  # a conv map is normalised as a whole
    norm = flat.square().mean(1, keepdim=True).sqrt() if rms else flat.norm(dim=1, keepdim=True)
    return (flat / (norm + 1e-6)).view_as(h)


class ForwardForward(LocalModel):
    """Forward-Forward MLP with goodness and linear-probe predictions."""

    name = "ff"

    def __init__(self, n_in, n_classes, cfg, shape=None):
        super().__init__(n_in, n_classes, cfg, shape)
        if cfg.conv and (cfg.ff.peer or cfg.ff.dropout):
            raise ValueError("ff.peer and ff.dropout are for MLPs; set them to 0 with conv")
        d = [numel(self.conv_out[-1]) if cfg.conv else n_in + n_classes, *cfg.hidden]
        self.layers = nn.ModuleList([*self.make_convs(extra_in=n_classes), *(nn.Linear(a, b) for a, b in pairwise(d))])
        self.widths = [*(numel(s) for s in self.conv_out), *cfg.hidden]
        self.probe = nn.Linear(sum(self.widths), n_classes)
        self.optimizers = [make_optimizer(layer.parameters(), cfg) for layer in self.layers]
        self.optimizers.append(make_optimizer(self.probe.parameters(), cfg, lr=cfg.ff.probe_lr))
        if not 1 <= cfg.ff.n_negatives < n_classes:
            raise ValueError(f"ff.n_negatives={cfg.ff.n_negatives} must be in [1, {n_classes - 1}] "
                             f"with {n_classes} classes")
        if cfg.ff.peer:  # buffers only when used: default checkpoints keep their keys
            for k, width in enumerate(cfg.hidden):
                self.register_buffer(f"peer_mean{k}", torch.zeros(width))

    def _embed(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:  # neutral label for the probe
            lab = torch.full((len(x), self.n_classes), 1.0 / self.n_classes)
        else:
            lab = F.one_hot(labels, self.n_classes).to(x.dtype)
        lab = self.cfg.ff.label_scale * lab
        if self.cfg.conv:  # the label as constant channels of the image
            img = self.image(x)
            return torch.cat([img, lab[:, :, None, None].expand(-1, -1, *img.shape[2:])], 1)
        return torch.cat([x, lab], 1)

    def _layer(self, k: int, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Layer k of the output of layer k - 1 (normalised first), inputs times ``mask`` if given."""
        z = h if k == 0 else self._norm(h)
        if k == len(self.conv_out) and self.conv_out:
            z = z.flatten(1)
        return self.act(self.layers[k](z if mask is None else z * mask))

    def _dropout_masks(self, batch: int) -> list[torch.Tensor] | None:
        """One inverted-dropout mask per layer input (pixels first), or None when dropout is off."""
        p = self.cfg.ff.dropout
        if not p:
            return None
        widths = [self.n_in, *self.cfg.hidden[:-1]]
        return [(torch.rand(batch, w, generator=self.gen) >= p).to(torch.float32) / (1 - p) for w in widths]

    def _norm(self, h: torch.Tensor) -> torch.Tensor:
        return _normalise(h, self.cfg.ff.norm == "rms")

    def _loss(self, g_pos: torch.Tensor, g_neg: torch.Tensor) -> torch.Tensor:
        c = self.cfg.ff
        g_pos = g_pos.repeat(len(g_neg) // len(g_pos))  # negatives come in blocks of one batch each
        if c.loss == "symba":
            return F.softplus(c.alpha * (g_neg - g_pos)).mean()
        return (F.softplus(c.threshold - g_pos) + F.softplus(g_neg - c.threshold)).mean()

    def _peer_loss(self, k: int, a_pos: torch.Tensor) -> torch.Tensor:
        """Spread of the units' running mean activity; gradient through this batch's share only."""
        m = getattr(self, f"peer_mean{k}")
        mean = self.cfg.ff.peer_momentum * m + (1 - self.cfg.ff.peer_momentum) * a_pos.mean(0)
        m.copy_(mean.detach())
        return (mean - mean.mean()).square().mean()

    @torch.no_grad()
    def negative_labels(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Wrong labels: uniform, or (``hard``) sampled from the probe's softmax.

        Shape ``(batch,)``, or ``(batch, n_negatives)`` of distinct labels when ``n_negatives > 1``.
        """
        k = self.cfg.ff.n_negatives
        if self.cfg.ff.negatives == "hard":
            logits = self.probe(self._features(x))
        elif k > 1:
            logits = torch.zeros(len(y), self.n_classes)
        else:
            shift = torch.randint(1, self.n_classes, y.shape, generator=self.gen)
            return (y + shift) % self.n_classes
        logits[torch.arange(len(y)), y] = float("-inf")  # never the true label
        neg = torch.multinomial(logits.softmax(1), k, generator=self.gen)  # without replacement
        return neg.squeeze(1) if k == 1 else neg

    def train_step(self, x, y):
        if self.cfg.ff.loss == "softmax":
            return self._train_step_all_labels(x, y)
        labels = self.negative_labels(x, y)
        blocks = labels.shape[1] if labels.dim() == 2 else 1
        if blocks > 1:  # k negatives: k blocks of the batch, one wrong label each
            labels = labels.T.reshape(-1)
        masks = self._dropout_masks(len(x))
        x_in = x if masks is None else x * masks[0]
        x_neg = _tile(x_in, blocks) if blocks > 1 else x_in
        pos, neg = self._embed(x_in, y), self._embed(x_neg, labels)
        if self.cfg.ff.collab:  # the other layers' goodness, before anything steps
            rest_pos, rest_neg = self._others_goodness(pos, masks, 1), self._others_goodness(neg, masks, blocks)
        losses = []
        for k, opt in enumerate(self.optimizers[:-1]):
            m_pos = m_neg = None
            if masks is not None and k > 0:  # the same mask for a positive and its negatives
                m_pos, m_neg = masks[k], masks[k].repeat(blocks, 1)
            a_pos, a_neg = self._layer(k, pos, m_pos), self._layer(k, neg, m_neg)  # inputs detached
            g_pos, g_neg = goodness(a_pos), goodness(a_neg)
            if self.cfg.ff.collab:
                g_pos, g_neg = g_pos + rest_pos[k], g_neg + rest_neg[k]
            loss = self._loss(g_pos, g_neg)
            if self.cfg.ff.peer:
                loss = loss + self.cfg.ff.peer * self._peer_loss(k, a_pos)
            losses.append(local_step(opt, loss))
            pos, neg = a_pos.detach(), a_neg.detach()
        self._train_probe(x, y)
        return sum(losses) / len(losses)

    def _train_step_all_labels(self, x, y):
        c, b = self.n_classes, len(x)
        masks = self._dropout_masks(b)
        x_in = x if masks is None else x * masks[0]
        h = self._embed(_tile(x_in, c), torch.arange(c).repeat_interleave(b))  # block j: label j
        if self.cfg.ff.collab:
            rest = self._others_goodness(h, masks, c)
        losses = []
        for k, opt in enumerate(self.optimizers[:-1]):
            a = self._layer(k, h, masks[k].repeat(c, 1) if masks is not None and k > 0 else None)
            g = goodness(a)
            if self.cfg.ff.collab:
                g = g + rest[k]
            g = g.view(c, b).T  # (batch, classes)
            loss = F.cross_entropy(self.cfg.ff.alpha * g, y)
            if self.cfg.ff.peer:
                loss = loss + self.cfg.ff.peer * self._peer_loss(k, a.view(c, b, -1)[y, torch.arange(b)])
            losses.append(local_step(opt, loss))
            h = a.detach()
        self._train_probe(x, y)
        return sum(losses) / len(losses)

    @torch.no_grad()
    def _others_goodness(self, h: torch.Tensor, masks: list[torch.Tensor] | None, blocks: int) -> torch.Tensor:
        """Row k: the goodness summed over every layer but k, shape ``(layers, batch)``.

        ``masks`` (dropout, one batch's worth, repeated ``blocks`` times) as the step will use them.
        """
        per_layer = []
        for k in range(len(self.layers)):
            h = self._layer(k, h, masks[k].repeat(blocks, 1) if masks is not None and k > 0 else None)
            per_layer.append(goodness(h))
        g = torch.stack(per_layer)
        return g.sum(0, keepdim=True) - g

    def _train_probe(self, x, y):
        # the probe learns from detached features; it never sends anything back
        local_step(self.optimizers[-1], F.cross_entropy(self.probe(self._features(x)), y))

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        h, feats = self._embed(x, None), []
        for k in range(len(self.layers)):
            h = self._layer(k, h)
            feats.append(self._norm(h).flatten(1))
        return torch.cat(feats, 1)

    @torch.no_grad()
    def goodness_scores(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for c in range(self.n_classes):
            h, total = self._embed(x, torch.full((len(x),), c, dtype=torch.long)), 0
            for k in range(len(self.layers)):
                h = self._layer(k, h)
                total = total + goodness(h)
            out.append(total)
        return torch.stack(out, 1)

    def _combine(self, good: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.cfg.ff.alpha * good, 1) + F.log_softmax(probe, 1)

    @torch.no_grad()
    def scores(self, x):
        predict = self.cfg.ff.predict
        if predict == "probe":
            return self.probe(self._features(x))
        if predict == "combined":
            return self._combine(self.goodness_scores(x), self.probe(self._features(x)))
        return self.goodness_scores(x)

    @torch.no_grad()
    def evaluate(self, x, y, batch_size=1024):
        good = probe = both = 0
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            g, p = self.goodness_scores(xb), self.probe(self._features(xb))
            good += int((g.argmax(1) == yb).sum())
            probe += int((p.argmax(1) == yb).sum())
            both += int((self._combine(g, p).argmax(1) == yb).sum())
        n = max(1, len(y))
        res = {"acc_goodness": good / n, "acc_probe": probe / n, "acc_combined": both / n}
        res["acc"] = res[f"acc_{self.cfg.ff.predict}"]
        return res

    def flops_per_example(self):
        if self.cfg.conv:
            extra = (self.shape[0] + self.n_classes, *self.shape[1:])
            fwd = sum(conv_flops(extra, self.cfg.conv)) + linear_flops([numel(self.conv_out[-1]), *self.cfg.hidden])
        else:
            fwd = linear_flops([self.n_in + self.n_classes, *self.cfg.hidden])
        probe = 2 * sum(self.widths) * self.n_classes
        # positive and negative passes with weight gradients, a neutral pass and the probe
        # (hard negatives: one more neutral pass and probe forward to draw the labels)
        hard = fwd + probe if self.cfg.ff.negatives == "hard" else 0
        passes = 1 + self.cfg.ff.n_negatives
        if self.cfg.ff.loss == "softmax":  # every label, no draw
            hard, passes = 0, self.n_classes
        if self.cfg.ff.collab:  # the no-grad pass for the other layers' goodness
            hard += passes * fwd
        predict = {"goodness": self.n_classes * fwd, "probe": fwd + probe,
                   "combined": (self.n_classes + 1) * fwd + probe}[self.cfg.ff.predict]
        return {"train": passes * 2 * fwd + fwd + 2 * probe + hard, "predict": predict}


def _tile(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` copies of the batch one after another (rows or images)."""
    return x.repeat(n, *([1] * (x.dim() - 1)))
