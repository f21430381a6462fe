"""chunk_feedforward: same outputs and ZO steps with less activation memory; undone cleanly; bad input named."""

import pytest
import torch

from forwardonly.errors import UserError
from forwardonly.models import tiny_model
from forwardonly.models.chunking import chunk_feedforward, unchunk_feedforward


@pytest.fixture()
def model():
    m, _ = tiny_model("llama", seed=0)
    return m.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_chunked_logits_match_and_unchunk_restores(model):
    ids = torch.randint(0, model.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
    ref = _logits(model, ids)
    n = chunk_feedforward(model, tokens=4)  # 33 tokens: chunks of 4, the last one of 1
    assert n == model.config.num_hidden_layers
    calls = []
    mlp = model.model.layers[0].mlp
    hook = mlp.down_proj.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    out = _logits(model, ids)
    hook.remove()
    assert calls == [4] * 8 + [1]  # the block really ran on chunks
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert chunk_feedforward(model, tokens=64) == n  # re-chunking updates the size, does not nest
    torch.testing.assert_close(_logits(model, ids), ref, rtol=1e-6, atol=1e-6)
    assert unchunk_feedforward(model) == n and "forward" not in vars(mlp)
    assert torch.equal(_logits(model, ids), ref)


def test_autograd_runs_whole_and_gradients_agree(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    model(input_ids=ids, use_cache=False).logits.square().mean().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    chunk_feedforward(model, tokens=2)
    calls = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    model(input_ids=ids, use_cache=False).logits.square().mean().backward()
    hook.remove()
    assert calls == [torch.Size([2, 9, model.config.intermediate_size])]
    for a, p in zip(ref, model.parameters()):
        assert torch.equal(a, p.grad)


def test_zo_steps_agree_with_the_unchunked_model():
    from forwardonly.optim import ZOSGD

    ends = []
    for chunk in (None, 5):
        m, _ = tiny_model("llama", seed=0)
        if chunk:
            chunk_feedforward(m, tokens=chunk)
        ids = torch.randint(0, m.config.vocab_size, (4, 8), generator=torch.Generator().manual_seed(2))
        opt = ZOSGD(m.parameters(), lr=1e-3, eps=1e-3, seed=3)
        for _ in range(3):
            opt.step(lambda: m(input_ids=ids, labels=ids, use_cache=False).loss)
        ends.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    torch.testing.assert_close(ends[0], ends[1], rtol=1e-5, atol=1e-7)


def test_bad_input_is_named(model):
    with pytest.raises(UserError, match=r"tokens=0 must be a positive integer"):
        chunk_feedforward(model, tokens=0)
    with pytest.raises(UserError, match=r"no feed-forward block named one of \['nope'\]"):
        chunk_feedforward(model, tokens=8, names=("nope",))
