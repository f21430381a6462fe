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
