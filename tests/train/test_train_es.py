"""Evolution strategies through ``forwardonly train`` and ZOTrainer on a tiny Llama: antithetic ES on the accuracy
objective with a bitwise seed-log replay, bad options as one-line errors before anything is written."""

import json

import pytest
import torch

from forwardonly.checkpoint import SeedLog
from forwardonly.cli.main import main
from forwardonly.config import load_config
from forwardonly.errors import UserError
from forwardonly.lm.config import TrainConfig
from forwardonly.lm.train import replay_seedlog

QUIET = ("test=false", "validate=false")


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_es_trains_on_accuracy_and_its_seed_log_replays_bitwise(ov, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *ov("steps=4", "optim.name=es", "optim.population=3", "optim.sigma=0.05",
                                                 "optim.lr=1e-3", "task.objective=accuracy", "scheme.name=bitfit",
                                                 "scheme.norm=true", *QUIET, f"out_dir={out}")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 4 and summary["forwards"] == 4 * 6 and summary["skipped_steps"] == 0
    log = SeedLog.load(out / "seedlog.json")
    assert [len(e["scalars"]["loss_plus"]) for e in log.entries] == [3, 3, 3, 3]
    # accuracy on 4 sentences: every loss is a multiple of 1/4
    assert all(4 * v == round(4 * v) for e in log.entries for v in e["scalars"]["loss_plus"])
    from safetensors.torch import load_file

    trained = load_file(str(out / "checkpoint" / "trainable.safetensors"))
    replayed, _ = replay_seedlog(out / "seedlog.json")
    got = _weights(replayed)
    assert all(torch.equal(trained[n], got[n]) for n in trained)


@pytest.mark.parametrize("override, msg", [
    (["optim.name=es", "optim.population=0"], r"optim \(es\): Invalid population: 0 "),
    (["optim.name=es", "optim.sigma=0"], r"optim \(es\): Invalid sigma: 0.0 "),
    (["optim.name=es", "optim.sigma=-0.1"], r"optim \(es\): Invalid sigma: -0.1 "),
    (["optim.name=es", "optim.q=2"], "unknown key 'optim.q' of optimizer es"),
])
def test_bad_es_options_are_one_line_config_errors(override, msg):
    with pytest.raises(UserError, match=msg) as e:
        load_config(TrainConfig, None, override)
    assert "\n" not in str(e.value)


def test_bad_es_option_on_the_command_line_exits_2_and_writes_nothing(ov, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--no-progress", *ov("optim.name=es", "optim.population=0", f"out_dir={out}")]) == 2
    err = capsys.readouterr().err.strip()
    assert "population: 0" in err and "\n" not in err
    assert not out.exists()


def test_zotrainer_runs_es(tmp_path):
    from transformers import TrainingArguments

    from forwardonly.hf import ZOTrainer
    from forwardonly.models import tiny_model

    model, tok = tiny_model("llama", seed=0)
    ids = torch.tensor([tok("the movie was good")["input_ids"][:3]] * 4)
    ds = [{"input_ids": row, "labels": row.clone()} for row in ids]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, report_to=[],
                             use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=1e-3)
    before = _weights(model)
    trainer = ZOTrainer(model=model, args=args, train_dataset=ds, zo_optimizer="es",
                        zo_kwargs={"population": 2, "sigma": 1e-2, "seed": 0})
    trainer.train()
    assert trainer.zo_optimizer.zo_state["forwards"] == 3 * 4
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_cma_es_trains_a_label_bias_and_resumes_bitwise(cfg_of, tmp_path):
    pytest.importorskip("cma")
    from forwardonly.lm.train import run

    common = ("optim.name=cma-es", "optim.sigma=2.0", "scheme.name=label_bias", "task.objective=accuracy",
              "task.max_train=16", "batch_size=16", *QUIET)
    straight = run(cfg_of("steps=6", *common, f"out_dir={tmp_path / 'a'}"), progress=False)
    assert straight["trainable_parameters"] == 2 and straight["forwards"] == 6 * 6  # 4 + 3 ln 2 -> 6 a step
    bias = straight["model"].label_bias.bias.detach().clone()
    assert not torch.equal(bias, torch.zeros(2))
    run(cfg_of("steps=3", *common, f"out_dir={tmp_path / 'b'}"), progress=False)
    resumed = run(cfg_of("steps=6", *common, f"out_dir={tmp_path / 'b'}"), resume=True, progress=False)
    assert torch.equal(resumed["model"].label_bias.bias, bias)
    with pytest.raises(UserError, match="label_bias"):
        replay_seedlog(tmp_path / "a" / "seedlog.json")


def test_cma_es_refuses_a_large_parameter_set_before_training(cfg_of, tmp_path):
    pytest.importorskip("cma")
    from forwardonly.lm.train import run

    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"optim: Invalid parameter set for cma-es: \d+ values \(max_dim=1000") as e:
        run(cfg_of("steps=2", "optim.name=cma-es", "scheme.name=full", *QUIET, f"out_dir={out}"), progress=False)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_es_on_lora_singular_values_trains_and_replays_bitwise(cfg_of, tmp_path):
    from forwardonly.lm.train import run

    out = tmp_path / "run"
    s = run(cfg_of("steps=3", "optim.name=es", "optim.population=2", "optim.sigma=0.5", "optim.lr=0.05",
                   "scheme.name=lora_svd", "scheme.r=2", *QUIET, f"out_dir={out}"), progress=False)
    trained = {n: p.detach().clone() for n, p in s["model"].named_parameters() if p.requires_grad}
    assert s["trainable_parameters"] == 2 * len(trained) and all(n.endswith("svd_values.default.s") for n in trained)
    assert any(bool(p.abs().sum() > 0) for p in trained.values())
    replayed, _ = replay_seedlog(out / "seedlog.json")
    got = dict(replayed.named_parameters())
    assert all(torch.equal(trained[n], got[n]) for n in trained)
    assert (out / "final" / "adapter_model.safetensors").is_file()  # a plain LoRA adapter (U diag(s), V^T)
