"""Few-shot training sets, a classifier head fitted by a linear probe, and the test curve of a run."""

import json

import pytest
import torch

from forwardonly.config import load_config
from forwardonly.errors import UserError
from forwardonly.lm.config import TrainConfig
from forwardonly.lm.train import replay_seedlog, run
from forwardonly.models.head_init import fit_logistic, head_layer
from forwardonly.tasks import get_task, per_class


@pytest.fixture(scope="module")
def bert_dir(tiny_bert_dir):
    return tiny_bert_dir


def bert_cfg(bert_dir, *extra):
    return load_config(TrainConfig, None, [f"model.name={bert_dir}", "model.kind=classifier", "scheme.name=full",
                                           "task.max_eval=16", "task.max_test=16", "batch_size=4",
                                           "eval_batch_size=8", "threads=1", *extra])


def test_per_class_draws_k_of_each_class_by_seed():
    train = get_task("sentiment").splits["train"]
    a, again, other = per_class(train, 16, 0), per_class(train, 16, 0), per_class(train, 16, 1)
    assert len(a) == 32 and sorted(ex["target"] for ex in a) == [0] * 16 + [1] * 16
    assert a == again and a != other
    pos = [train.index(ex) for ex in a]
    assert pos == sorted(pos)  # the split's own order is kept
    # the shipped split has 727 negative and 473 positive sentences
    with pytest.raises(UserError, match=r"shots_per_class=474: class 1 \('positive'\) .* has only 473 examples"):
        per_class(train, 474, 0)
    with pytest.raises(UserError, match="without a class"):
        per_class([{"prompt": "q", "answers": ["a"]}], 1, 0)


def test_fit_logistic_meets_its_optimality_condition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g)
    y = (x[:, 0] + 0.3 * torch.randn(40, generator=g) > 0).long()
    w, b = fit_logistic(x, y, 2, l2=1.0)
    # gradient of  sum CE + 0.5 |W|^2  vanishes at the optimum
    p = torch.softmax(x.double() @ w.T + b, -1) - torch.nn.functional.one_hot(y, 2).double()
    assert torch.allclose(p.T @ x.double() + w, torch.zeros_like(w), atol=1e-4)
    assert torch.allclose(p.sum(0), torch.zeros(2, dtype=torch.float64), atol=1e-4)
    assert ((x.double() @ w.T + b).argmax(-1) == y).double().mean() > 0.85


def test_linear_probe_head_starts_the_run_and_replays_exactly(bert_dir, tmp_path, capsys):
    common = ("model.head_init=linear_probe", "task.shots_per_class=8", "validate=false")
    probe = run(bert_cfg(bert_dir, *common, "steps=0"), progress=False)
    random_head = run(bert_cfg(bert_dir, "task.shots_per_class=8", "validate=false", "steps=0"), progress=False)
    assert probe["train_examples"] == 16 and probe["head_init"]["examples"] == 16
    assert probe["head_init"]["layer"] == "classifier" and probe["head_init"]["train_accuracy"] > 0.5
    w_probe = head_layer(probe["model"])[1].weight
    assert not torch.equal(w_probe, head_layer(random_head["model"])[1].weight)
    # only the head differs from the freshly loaded model
    diff = [n for n, p in probe["model"].named_parameters()
            if not torch.equal(p, dict(random_head["model"].named_parameters())[n])]
    assert sorted(diff) == ["classifier.bias", "classifier.weight"]

    trained = run(bert_cfg(bert_dir, *common, "steps=4", "optim.lr=1e-3", f"out_dir={tmp_path}"), progress=False)
    assert trained["test_before"] == probe["test_after"]  # the run starts from the fitted head
    replayed, _ = replay_seedlog(tmp_path / "seedlog.json")
    theirs = dict(replayed.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in trained["model"].named_parameters())
    # evaluating the run refits the same head from its config (the training split is read for it)
    from forwardonly.cli.main import main

    capsys.readouterr()
    assert main(["eval", "--no-progress", "--run", str(tmp_path)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["accuracy"] == trained["test_after"]["accuracy"] and scored["n"] == trained["test_after"]["n"]


def test_test_curve_follows_forward_passes(cfg_of):
    s = run(cfg_of("steps=4", "test_every=2", "validate=true", "eval_every=2", "optim.q=1"), progress=False)
    assert [(p["step"], p["forwards"]) for p in s["test_curve"]] == [(2, 4), (4, 8)]
    assert s["test_curve"][-1]["accuracy"] == s["test_after"]["accuracy"]
    assert [(e["step"], e["forwards"]) for e in s["evals"]] == [(0, 0), (2, 4), (4, 8)]
    assert all(p["train_time_s"] >= 0 for p in s["test_curve"])


@pytest.mark.parametrize("override,msg", [
    ("task.shots_per_class=0", "task.shots_per_class=0 must be at least 1"),
    ("model.head_init=probe", "head_init"),
    ("test_every=-1", "test_every=-1 must be at least 0"),
])
def test_bad_values_are_named(override, msg):
    with pytest.raises(UserError, match=msg):
        load_config(TrainConfig, None, [override])


def test_linear_probe_needs_a_classifier(cfg_of):
    with pytest.raises(UserError, match="head_init=linear_probe needs a sequence classifier"):
        run(cfg_of("model.head_init=linear_probe", "steps=0", "validate=false"), progress=False)


def llama_cfg(tiny_dir, *extra):
    return load_config(TrainConfig, None, [f"model.name={tiny_dir}", "model.kind=classifier", "scheme.name=full",
                                           "model.head_init=linear_probe", "task.shots_per_class=8",
                                           "task.max_test=16", "validate=false", "batch_size=4", "eval_batch_size=8",
                                           "threads=1", *extra])


def test_a_decoder_head_gains_a_bias_and_standardised_features_fold_into_it(tiny_dir, tmp_path, capsys):
    from forwardonly.models.head_init import head_features

    raw = run(llama_cfg(tiny_dir, "steps=0"), progress=False)
    std = run(llama_cfg(tiny_dir, "steps=0", "model.head_standardize=true", "model.head_l2=10"), progress=False)
    name, layer = head_layer(std["model"])
    assert name == "score" and layer.bias is not None  # LlamaForSequenceClassification's score has no bias
    assert raw["head_init"]["layer"] == "score" and head_layer(raw["model"])[1].bias is not None
    assert not torch.equal(layer.weight, head_layer(raw["model"])[1].weight)  # l2 and scaling change the fit
    # the head is the standardised fit with the mean and deviation folded into its weight and bias
    from forwardonly.lm.setup import training_examples
    from forwardonly.tasks import make_objective, task_for_run

    cfg = llama_cfg(tiny_dir, "steps=0")
    task = task_for_run(cfg.task, [cfg.task.train_split])
    obj = make_objective(task, std["tokenizer"], cfg.task.objective, cfg.task.max_length, model=std["model"])
    x, y = head_features(std["model"], obj, training_examples(cfg, task), batch_size=8)
    x = x.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    w, b = fit_logistic((x - mu) / sd, y, 2, l2=10)
    assert torch.allclose(layer.weight.double(), w / sd, rtol=1e-4, atol=1e-5)
    assert torch.allclose(layer.bias.double(), b - (w / sd) @ mu, rtol=1e-4, atol=1e-4)
    # a trained run replays bitwise and is evaluated with the same head, bias included
    trained = run(llama_cfg(tiny_dir, "steps=3", "optim.lr=1e-3", "model.head_standardize=true",
                            f"out_dir={tmp_path}"), progress=False)
    assert trained["test_before"] == run(llama_cfg(tiny_dir, "steps=0", "model.head_standardize=true"),
                                         progress=False)["test_after"]
    replayed, _ = replay_seedlog(tmp_path / "seedlog.json")
    theirs = dict(replayed.named_parameters())
    assert "score.bias" in theirs
    assert all(torch.equal(p, theirs[n]) for n, p in trained["model"].named_parameters())
    from forwardonly.cli.main import main

    capsys.readouterr()
    assert main(["eval", "--no-progress", "--run", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == trained["test_after"]["accuracy"]


def test_a_probe_l2_that_is_not_positive_is_named():
    with pytest.raises(UserError, match=r"model.head_l2=0.0 must be > 0"):
        load_config(TrainConfig, None, ["model.head_l2=0"])


def test_the_probe_reads_a_decoder_at_its_last_real_token_on_either_padding_side():
    from types import SimpleNamespace

    from forwardonly.models.head_init import _read_position

    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=0))
    left = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 4]])
    right = torch.tensor([[5, 6, 0, 0], [7, 8, 9, 4]])
    assert _read_position(model, left).tolist() == [3, 3]
    assert _read_position(model, right).tolist() == [1, 3]
    no_pad = SimpleNamespace(config=SimpleNamespace(pad_token_id=None))
    assert _read_position(no_pad, right).tolist() == [3, 3]
