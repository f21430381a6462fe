"""Memory-efficient first-order baselines (LOMO, AdaLomo, GaLore) through the training loop."""

import pytest
import torch

from forwardonly.errors import UserError
from forwardonly.lm.train import run

COMMON = ("test=false", "validate=false", "task.max_train=8", "batch_size=8")


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lomo_is_sgd_fused_into_backward(cfg_of):
    pytest.importorskip("lomo_optim")
    lomo = run(cfg_of("steps=3", "optim.name=fo-lomo", "optim.lr=1e-2", *COMMON), progress=False)
    sgd = run(cfg_of("steps=3", "optim.name=fo-sgd", "optim.lr=1e-2", *COMMON), progress=False)
    a, b = _trainable(lomo["model"]), _trainable(sgd["model"])
    assert a.keys() == b.keys()
    for k in a:  # the same update; LOMO applies it per parameter inside backward
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert lomo["backwards"] == 3


def test_lomo_and_galore_lower_the_loss(cfg_of):
    pytest.importorskip("lomo_optim")
    pytest.importorskip("galore_torch")
    # plain SGD (LOMO) falls more slowly than Adam (GaLore) on the tiny model
    for ratio, extra in ((0.85, ("optim.name=fo-lomo", "optim.lr=0.3")),
                         (0.6, ("optim.name=fo-galore", "optim.lr=3e-3", "optim.rank=4", "optim.update_proj_gap=10"))):
        s = run(cfg_of("steps=30", *extra, *COMMON), progress=False)
        assert s["history"][-1]["loss"] < ratio * s["history"][0]["loss"], extra


def test_galore_projects_block_matrices_only():
    pytest.importorskip("galore_torch")
    from forwardonly.lm.baselines import FOGaLoreConfig, build_baseline

    w, emb, b = (torch.nn.Parameter(torch.randn(*s)) for s in ((16, 8), (32, 8), (8,)))
    opt = build_baseline("fo-galore", FOGaLoreConfig(rank=4), [w, emb, b], ["layers.0.w", "embed_tokens.weight", "b"])
    groups = {len(g["params"]): g for g in opt.param_groups}
    assert groups[1]["params"][0] is w and groups[1]["rank"] == 4
    assert "rank" not in groups[2]


def test_adalomo_on_cpu_and_lomo_accumulation_are_one_line_errors(cfg_of):
    pytest.importorskip("lomo_optim")
    with pytest.raises(UserError, match="fo-adalomo: lomo-optim's AdaLomo allocates its moments with .cuda"):
        run(cfg_of("steps=1", "optim.name=fo-adalomo", *COMMON), progress=False)
    with pytest.raises(UserError, match="optim.name=fo-lomo updates inside backward.*accum_steps=2 must be 1"):
        cfg_of("steps=1", "optim.name=fo-lomo", "accum_steps=2", *COMMON)
    with pytest.raises(UserError, match="rank=0 must be at least 1"):
        cfg_of("optim.name=fo-galore", "optim.rank=0")
