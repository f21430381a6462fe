"""Forward-Forward peer normalisation: the running-mean loss by hand, off by default, and its effect."""

from __future__ import annotations

import pytest
import torch

from forwardonly.local import LocalConfig, build_model
from forwardonly.local.config import FFConfig
from forwardonly.local.data import load_dataset
from forwardonly.local.trainer import train


def _cfg(**ff):
    return LocalConfig(algo="ff", data="digits", hidden=[64, 64], epochs=2, batch_size=32, patience=0, seed=0,
                       ff=FFConfig(norm="rms", **ff))


def test_peer_loss_by_hand():
    model = build_model(LocalConfig(algo="ff", hidden=[2], ff=FFConfig(peer=1.0, peer_momentum=0.5)), 3, 2)
    a = torch.tensor([[0.0, 2.0], [2.0, 4.0]], requires_grad=True)  # batch means 1, 3
    loss = model._peer_loss(0, a)  # running mean 0.5 * 0 + 0.5 * [1, 3] = [0.5, 1.5]; spread 0.25
    torch.testing.assert_close(loss, torch.tensor(0.25))
    torch.testing.assert_close(model.peer_mean0, torch.tensor([0.5, 1.5]))
    loss.backward()  # dL/dm = (m - mean m) = [-0.5, 0.5]; dm/da = 0.5 / 2 for each example
    torch.testing.assert_close(a.grad, torch.tensor([[-0.125, 0.125], [-0.125, 0.125]]))
    # the buffer carries over: 0.5 * [0.5, 1.5] + 0.5 * [1, 3] = [0.75, 2.25]; spread 0.5625
    torch.testing.assert_close(model._peer_loss(0, a.detach()), torch.tensor(0.5625))


def test_peer_off_by_default_keeps_the_state_keys():
    plain = build_model(LocalConfig(algo="ff", hidden=[8, 8]), 4, 3)
    peer = build_model(LocalConfig(algo="ff", hidden=[8, 8], ff=FFConfig(peer=0.03)), 4, 3)
    assert not any(k.startswith("peer_mean") for k in plain.state_dict())
    assert set(peer.state_dict()) - set(plain.state_dict()) == {"peer_mean0", "peer_mean1"}


@pytest.mark.parametrize("bad", [{"peer": -0.1}, {"peer_momentum": 1.0}, {"peer_momentum": -0.5}])
def test_peer_bad_values_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        FFConfig(**bad)


def test_peer_evens_out_the_units_mean_activity():
    """With a strong peer term the units' mean activities on training data spread less (relative to their mean)."""
    torch.set_num_threads(1)
    data = load_dataset("digits")

    def spread(peer):
        model = train(_cfg(peer=peer), data=data)["model"]
        h, out = model._embed(data.x_train, data.y_train), []
        with torch.no_grad():
            for k in range(len(model.layers)):
                h = model._layer(k, h)
                mu = h.mean(0)
                out.append(float((mu - mu.mean()).square().mean() / mu.mean().square()))
        return out

    off, on = spread(0.0), spread(1.0)  # measured: [0.223, 0.176] -> [0.095, 0.129]
    assert all(b < 0.8 * a for a, b in zip(off, on, strict=True)), (off, on)
