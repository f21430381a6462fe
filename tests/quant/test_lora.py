"""fp32 LoRA adapters on quantized layers (forwardonly.quant.lora), trained by ZO."""

import pytest
import torch
from torch import nn

from forwardonly.optim import ZOSGD
from forwardonly.quant import QuantLinear
from forwardonly.quant.lora import LoRAQuantLinear, add_lora


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.add_module("q_proj", QuantLinear.from_linear(nn.Linear(64, 32), group_size=32))
    net.add_module("act", nn.ReLU())
    net.add_module("v_proj", QuantLinear.from_linear(nn.Linear(32, 4), group_size=32))
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_adapters_start_as_the_quantized_model_and_match_the_dense_formula():
    net = _net()
    x = torch.randn(5, 64)
    before = net(x)
    params = add_lora(net, r=4, alpha=8.0)
    assert [type(m).__name__ for m in net] == ["LoRAQuantLinear", "ReLU", "LoRAQuantLinear"]
    assert len(params) == 4 and all(p.requires_grad and p.dtype == torch.float32 for p in params)
    assert torch.equal(net(x), before)  # B = 0
    layer = net.q_proj
    with torch.no_grad():
        layer.lora_B.normal_()
    dense = layer.base.dequantized()
    want = x @ (dense + 2.0 * layer.lora_B @ layer.lora_A).T + layer.base.bias
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


def test_same_seed_same_init_and_a_within_kaiming_bound():
    a, b = _net(), _net()
    pa, pb = add_lora(a, seed=3), add_lora(b, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert float(a.q_proj.lora_A.detach().abs().max()) <= 1 / 64**0.5
    pc = add_lora(_net(), seed=4)
    assert not torch.equal(pa[0], pc[0])


def test_zo_trains_only_the_adapters_and_lowers_the_loss():
    teacher = _net()  # the same quantized layers plus a planted low-rank change: reachable by the adapters
    add_lora(teacher, r=4, alpha=4.0)
    with torch.no_grad():
        teacher.q_proj.lora_B.normal_(std=0.3)
        teacher.v_proj.lora_B.normal_()
    x = torch.randn(32, 64)
    t = teacher(x).detach()
    net = _net()
    frozen = {k: v.clone() for k, v in net.state_dict().items()}
    params = add_lora(net, r=4, alpha=4.0)
    opt = ZOSGD(params, lr=3e-2, eps=1e-3, seed=0)
    losses = [float(opt.step(lambda: ((net(x) - t) ** 2).mean())) for _ in range(150)]
    assert losses[-1] < 0.2 * losses[0]  # measured: 0.99 -> 0.08
    state = net.state_dict()
    for k, v in frozen.items():  # codes, zero points, scales and biases of the base layers: untouched
        assert torch.equal(state[k.replace("q_proj.", "q_proj.base.").replace("v_proj.", "v_proj.base.")], v)
    assert float(net.q_proj.lora_B.detach().abs().max()) > 0


def test_a_zero_learning_rate_step_leaves_every_adapter_bitwise():
    net = _net()
    params = add_lora(net)
    with torch.no_grad():
        for p in params:
            p.normal_()
    before = [p.clone() for p in params]
    x = torch.randn(8, 64)
    ZOSGD(params, lr=0.0, eps=1e-2, seed=1).step(lambda: net(x).square().mean())
    assert all(torch.equal(p, q) for p, q in zip(params, before))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"no QuantLinear named \['o_proj'\].*q_proj"):
        add_lora(_net(), targets=("o_proj",))
    with pytest.raises(ValueError, match="targets is empty"):
        add_lora(_net(), targets=())
    with pytest.raises(ValueError, match="r=0"):
        add_lora(_net(), r=0)
    with pytest.raises(ValueError, match="alpha=-1"):
        add_lora(_net(), alpha=-1)
    with pytest.raises(TypeError, match="wraps a QuantLinear, got Linear"):
        LoRAQuantLinear(nn.Linear(4, 4))
