"""The fine-tuning loop on a tiny model: it learns, resumes exactly, replays, and refuses bad input."""

import json

import pytest
import torch

from forwardonly.checkpoint import SeedLog
from forwardonly.config import load_config
from forwardonly.errors import UserError
from forwardonly.lm.config import TrainConfig
from forwardonly.lm.train import lr_at, replay_seedlog, run, step_examples
from forwardonly.models import tiny_model
from forwardonly.tasks import evaluate, get_task


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_zo_training_lowers_the_loss(cfg_of):
    cfg = cfg_of("steps=60", "optim.lr=1e-2", "optim.q=2", "scheme.name=full", "test=false",
               "validate=false", "task.max_train=8", "batch_size=8")
    s = run(cfg, progress=False)
    first, last = s["history"][0]["loss"], s["history"][-1]["loss"]
    assert last < 0.8 * first, (first, last)
    assert s["forwards"] == 60 * 2 * 2  # two-sided, q=2


def test_fo_baseline_lowers_the_loss(cfg_of):
    cfg = cfg_of("steps=30", "optim.name=fo-adam", "optim.lr=3e-3", "test=false", "validate=false",
               "task.max_train=8", "batch_size=8")
    s = run(cfg, progress=False)
    assert s["history"][-1]["loss"] < 0.5 * s["history"][0]["loss"]
    assert s["backwards"] == 30


@pytest.mark.parametrize("optim", ["zo-sgd", "fo-adam"])
def test_train_time_is_read_from_the_given_clock(cfg_of, optim):
    ticks = iter(range(0, 1000, 5))  # each call 5 s later: a step, read twice, is timed at exactly 5 s
    cfg = cfg_of("steps=3", f"optim.name={optim}", "optim.lr=1e-3", "test=false", "validate=false",
                 "task.max_train=8", "batch_size=8")
    s = run(cfg, progress=False, clock=lambda: float(next(ticks)))
    assert s["train_time_s"] == 15.0


def test_frozen_weights_unchanged_under_lora(cfg_of, tiny_dir):
    cfg = cfg_of("steps=4", "optim.lr=1e-2", "scheme.name=lora", "scheme.r=2", "test=false",
               "validate=false")
    s = run(cfg, progress=False)
    from forwardonly.models import load_model

    base, _ = load_model(str(tiny_dir))
    ref = dict(base.named_parameters())
    changed = 0
    for name, p in s["model"].named_parameters():
        if p.requires_grad:
            changed += 1
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(p, ref[key]), name
    assert changed > 0


def test_resume_is_bitwise_identical(full_and_resumed, tmp_path):
    common = ("steps=8", "optim.name=zo-sgd-mmt", "optim.lr=1e-3", "optim.schedule=cosine", "optim.warmup_steps=2",
              "accum_steps=2", "test=false", "validate=false", "save_every=4", "log_every=3")
    full, resumed = full_and_resumed(common, crash_at=5)
    a, b = _weights(full["model"]), _weights(resumed["model"])
    assert all(torch.equal(a[n], b[n]) for n in a)
    rows = {d: [{k: v for k, v in json.loads(x).items() if k != "train_time_s"}
                for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in "ab"}
    assert [r["step"] for r in rows["b"]] == [3, 6, 8]
    assert rows["b"] == rows["a"]  # row 6 averages steps 4-6, two of them before the interruption


@pytest.mark.parametrize("optim", ["zo-sgd", "zo-sgd-cons", "zo-adam"])
def test_seed_log_replays_the_run_bitwise(cfg_of, tmp_path, optim):
    cfg = cfg_of("steps=6", f"optim.name={optim}", "optim.lr=1e-3", "optim.q=2", "test=false",
               "validate=false", f"out_dir={tmp_path}")
    trained = run(cfg, progress=False)["model"]
    log = SeedLog.load(tmp_path / "seedlog.json")
    assert len(log.entries) == 6
    assert (tmp_path / "seedlog.json").stat().st_size < 4000
    replayed, _ = replay_seedlog(tmp_path / "seedlog.json")
    a, b = _weights(trained), _weights(replayed)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_existing_run_is_not_overwritten(cfg_of, tmp_path):
    run(cfg_of("steps=1", "test=false", "validate=false", f"out_dir={tmp_path}"), progress=False)
    before = (tmp_path / "checkpoint" / "trainable.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        run(cfg_of("steps=2", "test=false", "validate=false", f"out_dir={tmp_path}"), progress=False)
    assert (tmp_path / "checkpoint" / "trainable.safetensors").read_bytes() == before


def test_budget_in_forward_passes_stops_early(cfg_of):
    s = run(cfg_of("steps=50", "budget_forwards=10", "test=false", "validate=false"), progress=False)
    assert s["step"] == 5 and s["forwards"] == 10


def test_eval_before_and_after(cfg_of):
    s = run(cfg_of("steps=2", "eval_every=1"), progress=False)
    # the untrained tiny Llama (seed 0) on the first 16 test sentences: 7 right (measured); the same as scoring
    # that model directly, outside the training loop
    assert s["test_before"] == pytest.approx({"accuracy": 7 / 16, "n": 16, "macro_f1": 0.3043}, abs=1e-4)
    model, tok = tiny_model("llama", seed=0)
    direct = evaluate(model, tok, get_task("sentiment"), "test", max_examples=16, batch_size=8, progress=False)
    assert direct["accuracy"] == s["test_before"]["accuracy"] and s["test_after"]["n"] == 16
    assert [e["step"] for e in s["evals"]] == [0, 1, 2]


def test_step_examples_cover_epochs_deterministically():
    train = list(range(10))
    seen = [x for t in range(5) for x in step_examples(train, 0, t, 4)]
    assert sorted(seen[:10]) == train and sorted(seen[10:20]) == train
    assert step_examples(train, 0, 3, 4) == step_examples(train, 0, 3, 4)
    assert step_examples(train, 1, 0, 4) != step_examples(train, 0, 0, 4)


def test_bucketing_groups_similar_lengths_and_still_covers_each_epoch():
    train = [{"prompt": "x" * n} for n in range(40)]
    steps = [step_examples(train, 0, t, 4, bucket=5) for t in range(10)]
    assert sorted(len(ex["prompt"]) for s in steps for ex in s) == list(range(40))
    plain = [step_examples(train, 0, t, 4) for t in range(10)]

    def spread(batches):
        return sum(max(len(e["prompt"]) for e in b) - min(len(e["prompt"]) for e in b) for b in batches)

    assert spread(steps) < 0.5 * spread(plain)


@pytest.mark.parametrize("schedule,expect", [("constant", [1.0, 1.0, 1.0]), ("linear", [1.0, 0.55, 0.1]),
                                             ("cosine", [1.0, 0.55, 0.1])])
def test_lr_schedules(schedule, expect):
    cfg = load_config(TrainConfig, None, [f"optim.schedule={schedule}", "optim.lr=1", "optim.min_lr_ratio=0.1"])
    got = [lr_at(cfg, t, 11) for t in (0, 5, 10)]
    assert got == pytest.approx(expect)
    warm = load_config(TrainConfig, None, ["optim.lr=1", "optim.warmup_steps=4"])
    assert [lr_at(warm, t, 10) for t in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


@pytest.mark.parametrize("override,msg", [
    (["optim.name=adam"], "optim.name='adam' is not one of"),
    (["optim.lr=-1"], "optim.lr=-1.0 must be >= 0"),
    (["steps=-3"], "steps=-3 must be at least 0"),
    (["stepz=3"], "unknown key 'stepz'; valid keys:"),
    (["scheme.name=adapter"], "scheme.name='adapter' is not one of"),
    (["save_every=5"], "save_every=5 needs out_dir"),
    (["nproc=2", "batch_size=3"], "must be divisible by nproc=2"),
])
def test_bad_config_values(override, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace("[", r"\[")):
        load_config(TrainConfig, None, override)


def test_missing_split_and_model(cfg_of, tmp_path):
    # a missing validation split is cut from train (tests/train/test_own_data_cli.py); a missing test split is not
    with pytest.raises(UserError, match="has no split 'dev'.*task.data.dev=FILE or skip it with test=false"):
        run(cfg_of("task.test_split=dev"), progress=False)
    with pytest.raises(UserError, match="model path not found"):
        run(load_config(TrainConfig, None, [f"model.name={tmp_path}/nope/x", "threads=1"]), progress=False)


def test_forward_grad_trains_a_causal_lm(cfg_of):
    # CPU SDPA attention has no forward-mode derivative; the loop loads such runs with eager attention.
    s = run(cfg_of("steps=3", "optim.name=forward-grad", "optim.lr=1e-3", "test=false", "validate=false"),
            progress=False)
    assert s["step"] == 3 and s["forwards"] == 3 and s["skipped_steps"] == 0


def test_chunked_feedforward_trains_the_same_and_bad_values_are_named(cfg_of):
    from forwardonly.errors import UserError

    common = ("steps=4", "optim.name=zo-sgd", "optim.lr=1e-3", "test=false", "validate=false")
    whole = run(cfg_of(*common), progress=False)
    chunked = run(cfg_of(*common, "model.chunk_feedforward=3"), progress=False)
    a, b = _weights(whole["model"]), _weights(chunked["model"])
    assert all(torch.allclose(a[n], b[n], rtol=1e-5, atol=1e-7) for n in a)
    assert "forward" in vars(chunked["model"].model.layers[0].mlp)  # the blocks really were wrapped
    with pytest.raises(UserError, match=r"model.chunk_feedforward=-1 must be >= 0"):
        cfg_of("model.chunk_feedforward=-1")


@pytest.mark.parametrize("extra", [(), ("scheme.name=lora",), ("scheme.name=prefix",), ("accum_steps=2",)])
def test_paired_training_follows_the_sequential_run(cfg_of, extra):
    """optim.paired=true: one forward over the doubled batch per probe; the same run up to float order."""
    common = ("steps=8", "optim.lr=1e-2", "test=false", "validate=false", "task.max_train=16", *extra)
    seq = run(cfg_of(*common), progress=False)
    par = run(cfg_of(*common, "optim.paired=true"), progress=False)
    assert par["forwards"] == seq["forwards"] == 8 * 2 * (2 if "accum_steps=2" in extra else 1)
    a, b = _weights(seq["model"]), _weights(par["model"])
    moved = 0.0
    init = _weights(run(cfg_of(*common, "steps=0"), progress=False)["model"])
    for n in a:  # |dg| ~ 2e-4 (float order of a batch twice as large) x lr 1e-2 x 8 steps ~ 2e-5
        torch.testing.assert_close(b[n], a[n], rtol=0, atol=2e-5, msg=n)
        moved = max(moved, float((a[n] - init[n]).abs().max()))
    assert moved > 4e-4  # 20x the tolerance
    for hs, hp in zip(seq["history"], par["history"]):
        assert hp["loss"] == pytest.approx(hs["loss"], rel=1e-4)


@pytest.mark.parametrize("override,msg", [
    (["optim.name=fo-adam", "optim.paired=true"], "unknown key 'optim.paired' of optimizer fo-adam"),
    (["optim.two_sided=false", "optim.paired=true"], r"optim \(zo-sgd\): Invalid paired=True: pairing evaluates the two"),
    (["optim.name=zo-sgd-cons", "optim.paired=true"], r"optim \(zo-sgd-cons\): .*conservative variant compares"),
    (["scheme.name=prompt", "optim.paired=true"], "repeats it over the batch"),
])
def test_paired_config_errors(override, msg):
    with pytest.raises(UserError, match=msg):
        load_config(TrainConfig, None, override)
