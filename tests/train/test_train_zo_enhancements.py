"""The loop with ZO-Bench's enhancements (block-wise ZO, sparse perturbations, hybrid ZO/FO) on a tiny Llama."""

import json

import pytest
import torch

from forwardonly.cli.main import main
from forwardonly.config import load_config
from forwardonly.errors import UserError
from forwardonly.lm.config import TrainConfig
from forwardonly.lm.train import replay_seedlog, run

QUIET = ("test=false", "validate=false", "scheme.name=full")


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _block(name):
    return next((f"layers.{k}" for k in range(2) if f"layers.{k}." in name), name.rsplit(".", 1)[0])


@pytest.mark.parametrize("name, forwards, backwards", [
    ("zo-sgd-block", 8, 0), ("zo-sgd-sparse", 8, 0), ("zo-sgd-hybrid", 12, 4)])
def test_forwardonly_train_runs_each_enhancement(ov, tmp_path, capsys, name, forwards, backwards):
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *ov("steps=4", f"optim.name={name}", "optim.lr=1e-3", *QUIET,
                                                 f"out_dir={out}")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 4 and summary["forwards"] == forwards and summary["backwards"] == backwards
    assert summary["skipped_steps"] == 0
    # a hybrid's first-order updates are not a function of seeds: no seed log for it
    assert (out / "seedlog.json").is_file() == (name != "zo-sgd-hybrid")


def test_block_steps_move_one_block_each(cfg_of):
    base = _weights(run(cfg_of("steps=0", *QUIET), progress=False)["model"])
    s = run(cfg_of("steps=2", "optim.name=zo-sgd-block", "optim.lr=1e-2", *QUIET), progress=False)
    after = _weights(s["model"])
    moved = sorted({_block(n) for n in base if not torch.equal(base[n], after[n])})
    assert moved == ["layers.0", "model.embed_tokens"]  # blocks: embeddings, layers.0, layers.1, final norm
    assert s["forwards"] == 4


def test_hybrid_trains_the_top_first_order_and_the_rest_by_zo(cfg_of):
    base = _weights(run(cfg_of("steps=0", *QUIET), progress=False)["model"])
    cfg = cfg_of("steps=3", "optim.name=zo-sgd-hybrid", "optim.lr=1e-3", "optim.fo_lr=1e-2", "optim.fo_blocks=2",
                 "optim.fo_optim=sgd", "optim.schedule=linear", "optim.min_lr_ratio=0.5", *QUIET)
    s = run(cfg, progress=False)
    after = _weights(s["model"])
    moved = {_block(n) for n in base if not torch.equal(base[n], after[n])}
    assert moved == {"model.embed_tokens", "layers.0", "layers.1", "model.norm"}
    assert s["forwards"] == 9 and s["backwards"] == 3
    assert all(p.grad is None for p in s["model"].parameters())


def test_hybrid_with_zo_lr_zero_trains_only_the_first_order_part(cfg_of):
    # the ablation of the ZO part: same forwards and steps, the ZO blocks stay bit for bit
    base = _weights(run(cfg_of("steps=0", *QUIET), progress=False)["model"])
    s = run(cfg_of("steps=3", "optim.name=zo-sgd-hybrid", "optim.lr=0", "optim.fo_lr=1e-2", *QUIET), progress=False)
    after = _weights(s["model"])
    assert {_block(n) for n in base if not torch.equal(base[n], after[n])} == {"layers.1", "model.norm"}
    assert s["forwards"] == 9


def test_hybrid_first_order_lr_follows_the_schedule(cfg_of, monkeypatch):
    import forwardonly.lm.train as train_mod

    seen = []
    real = train_mod._zo_step

    def spy(opt, *a):
        seen.append(sorted({round(g["lr"], 12) for g in opt.param_groups}))
        return real(opt, *a)

    monkeypatch.setattr(train_mod, "_zo_step", spy)
    run(cfg_of("steps=3", "optim.name=zo-sgd-hybrid", "optim.lr=1e-3", "optim.fo_lr=1e-2",
               "optim.schedule=linear", "optim.min_lr_ratio=0.5", *QUIET), progress=False)
    assert seen == [[1e-3, 1e-2], [7.5e-4, 7.5e-3], [5e-4, 5e-3]]


def test_hybrid_resume_is_bitwise_identical(full_and_resumed, tmp_path):
    common = ("steps=6", "optim.name=zo-sgd-hybrid", "optim.lr=1e-3", "optim.fo_lr=1e-2", "accum_steps=2",
              "save_every=3", *QUIET)
    full, resumed = full_and_resumed(common, crash_at=4)
    a, b = _weights(full["model"]), _weights(resumed["model"])
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert resumed["forwards"] == full["forwards"] == 6 * 3 * 2


@pytest.mark.parametrize("optim", ["zo-sgd-block", "zo-sgd-sparse"])
def test_seed_log_replays_block_and_sparse_runs_bitwise(cfg_of, tmp_path, optim):
    cfg = cfg_of("steps=5", f"optim.name={optim}", "optim.lr=1e-3", "optim.q=2", *QUIET, f"out_dir={tmp_path}")
    trained = run(cfg, progress=False)["model"]
    replayed, _ = replay_seedlog(tmp_path / "seedlog.json")
    a, b = _weights(trained), _weights(replayed)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("override, msg", [
    (["optim.name=zo-sgd", "optim.density=0.5"], "unknown key 'optim.density' of optimizer zo-sgd"),
    (["optim.name=zo-sgd-sparse", "optim.density=0"], "zo-sgd-sparse.: Invalid density .fraction of entries "
                                                      "perturbed.: 0.0"),
    (["optim.name=zo-sgd-hybrid", "optim.fo_blocks=0"], "zo-sgd-hybrid.: Invalid fo_blocks: 0"),
    (["optim.name=zo-sgd-hybrid", "optim.fo_optim=lion"], "fo_optim"),
])
def test_bad_enhancement_options(override, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace("]", r"\]")):
        load_config(TrainConfig, None, override)


def test_too_many_first_order_blocks_is_a_user_error(cfg_of):
    with pytest.raises(UserError, match="Invalid fo_blocks: 4 .*4 blocks"):
        run(cfg_of("steps=1", "optim.name=zo-sgd-hybrid", "optim.fo_blocks=4", *QUIET), progress=False)
