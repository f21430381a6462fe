"""ZOTrainer: the Hugging Face Trainer's loop with zeroth-order steps, on one process and on two."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[2] / "src"
if str(SRC) not in sys.path:  # the rank processes run this file as a script
    sys.path.insert(0, str(SRC))

from forwardonly.hf import ZOTrainer  # noqa: E402
from forwardonly.models import tiny_model  # noqa: E402


class _Sentences(torch.utils.data.Dataset):
    def __init__(self, tok, n=16):
        text = ["the movie was good", "the food was bad", "great hotel staff", "terrible service"] * (n // 4)
        self.rows = [(tok(t)["input_ids"] + [tok.eos_token_id] * 3)[:3] for t in text]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        ids = torch.tensor(self.rows[i])
        return {"input_ids": ids, "labels": ids.clone()}


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=40, learning_rate=3e-3,
                lr_scheduler_type="constant", report_to=[], logging_steps=10, save_strategy="no",
                use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True)
    return TrainingArguments(**{**base, **kw})


def _loss(model, ds):
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        return float(model(**batch).loss)


def test_zotrainer_lowers_the_loss_with_accumulation(tmp_path):
    torch.set_num_threads(1)
    model, tok = tiny_model("llama", seed=0)
    ds = _Sentences(tok)
    before = _loss(model, ds)
    trainer = ZOTrainer(model=model, args=_args(tmp_path, gradient_accumulation_steps=2), train_dataset=ds,
                        zo_optimizer="zo-sgd", zo_kwargs={"eps": 1e-3, "q": 2, "seed": 0})
    trainer.train()
    zs = trainer.zo_optimizer.zo_state
    assert zs["step"] == 40
    assert zs["forwards"] == 40 * 2 * 2 * 2  # forward passes: steps x two-sided x q x micro-batches
    assert all(p.grad is None for p in model.parameters())  # nothing ran backward
    assert _loss(model, ds) < 0.95 * before
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert [r["forwards"] for r in rows] == [8 * s for s in (10, 20, 30, 40)]  # 8 a step
    assert all(r["projected_grad"] != 0.0 and "grad_norm" not in r for r in rows)
    assert trainer.args.max_grad_norm == 1.0  # the user's value, untouched (ZO has no gradient to clip)


def test_zotrainer_with_lora_leaves_frozen_weights_alone(tmp_path):
    import peft

    torch.set_num_threads(1)
    model, tok = tiny_model("llama", seed=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    trainer = ZOTrainer(model=model, args=_args(tmp_path, max_steps=5), train_dataset=_Sentences(tok),
                        zo_kwargs={"seed": 1})
    trainer.train()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, frozen[key]), name
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # adapters moved from their zero init


def test_zo_kwargs_win_over_the_training_arguments(tmp_path):
    torch.set_num_threads(1)
    model, tok = tiny_model("llama", seed=0)
    trainer = ZOTrainer(model=model, args=_args(tmp_path, max_steps=2, learning_rate=1e-3, logging_steps=2),
                        train_dataset=_Sentences(tok),
                        zo_kwargs={"lr": 5e-4, "weight_decay": 0.1, "seed": 3})
    trainer.train()
    opt = trainer.zo_optimizer
    assert opt.param_groups[0]["lr"] == 5e-4 and opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.zo_state["seed"] == 3
    assert [r["learning_rate"] for r in trainer.state.log_history if "loss" in r] == [5e-4]
    with pytest.raises(ValueError, match="Invalid zo_reduce: 'params'"):
        ZOTrainer(model=model, args=_args(tmp_path), train_dataset=_Sentences(tok), zo_reduce="params")
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        ZOTrainer(model=model, args=_args(tmp_path), train_dataset=_Sentences(tok),
                  zo_kwargs={"accum_steps": 2})


def test_a_hand_built_zo_optimizer_is_adopted_and_others_refused(tmp_path):
    from forwardonly.optim import ZOSGD

    torch.set_num_threads(1)
    model, tok = tiny_model("llama", seed=0)
    zo = ZOSGD(model.parameters(), lr=1e-3, seed=0)
    sched = torch.optim.lr_scheduler.LambdaLR(zo, lambda s: 1.0)
    trainer = ZOTrainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=_Sentences(tok),
                        optimizers=(zo, sched))
    trainer.train()
    assert trainer.zo_optimizer is zo and zo.zo_state["step"] == 2
    with pytest.raises(TypeError, match="needs a zeroth-order optimizer.*got SGD"):
        ZOTrainer(model=model, args=_args(tmp_path), train_dataset=_Sentences(tok),
                  optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))


def test_sharded_setups_are_refused(tmp_path):
    model, tok = tiny_model("llama", seed=0)
    trainer = ZOTrainer(model=model, args=_args(tmp_path), train_dataset=_Sentences(tok))
    trainer.is_fsdp_enabled = True  # what accelerate reports for an FSDP launch
    with pytest.raises(ValueError, match="data-parallel only.*FSDP is not supported"):
        trainer._refuse_sharding()


def test_a_plain_trainer_with_a_zo_optimizer_points_to_zotrainer(tmp_path):
    from transformers import Trainer

    from forwardonly.optim import ZOSGD

    model, tok = tiny_model("llama", seed=0)
    zo = ZOSGD(model.parameters(), lr=1e-3)
    trainer = Trainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_Sentences(tok),
                      optimizers=(zo, torch.optim.lr_scheduler.LambdaLR(zo, lambda s: 1.0)))
    with pytest.raises(ValueError) as e:
        trainer.train()
    msg = str(e.value)
    assert "needs a closure" in msg and "forwardonly.hf.ZOTrainer" in msg and "\n" not in msg


# --------------------------------------------------------------------------- two processes
ACCUM, STEPS = 2, 4


class _Tokens(torch.utils.data.Dataset):
    """``n`` distinct seeded rows of token ids: every micro-batch differs, so a rank that skipped the
    others' micro-batches would end elsewhere."""

    def __init__(self, n=32, length=6):
        self.ids = torch.randint(3, 1000, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i].clone()}


def _train(out, accum):
    """The run both sides of the parity test make: tiny Llama, 32 rows in order, ZO-SGD q=2."""
    torch.set_num_threads(1)
    model, _ = tiny_model("llama", seed=0)
    trainer = ZOTrainer(model=model, train_dataset=_Tokens(), zo_kwargs={"eps": 1e-3, "q": 2},
                        args=_args(out, gradient_accumulation_steps=accum, max_steps=STEPS, logging_steps=1,
                                   train_sampling_strategy="sequential"))
    trainer.train()
    return model, trainer


def test_two_processes_end_bitwise_equal_to_each_other_and_to_one_with_twice_the_accumulation(tmp_path):
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "--max-restarts=0", __file__, str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    model, trainer = _train(tmp_path / "one", 2 * ACCUM)
    start = dict(tiny_model("llama", seed=0)[0].named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
        assert torch.equal(ranks[0]["weights"][name], p.detach()), name
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())
    one = [r for r in trainer.state.log_history if "loss" in r]
    for rank in ranks:
        rows = [r for r in rank["log"] if "loss" in r]
        assert [(r["loss"], r["projected_grad"], r["forwards"]) for r in rows] == \
               [(r["loss"], r["projected_grad"], r["forwards"]) for r in one]
    assert one[-1]["forwards"] == STEPS * 2 * 2 * 2 * ACCUM  # steps x two-sided x q x all micro-batches


if __name__ == "__main__":  # one rank of the parity test, started by torchrun
    out = Path(sys.argv[1])
    model, trainer = _train(out / "ranks", ACCUM)
    weights = {n: p.detach() for n, p in model.named_parameters()}
    torch.save({"weights": weights, "log": trainer.state.log_history}, out / f"rank{os.environ['RANK']}.pt")


@pytest.mark.parametrize("how", ["offload", "quant"])
def test_zotrainer_takes_a_model_holder(tmp_path, how):
    """A model held streamed (bitwise the in-memory run) or quantized (only the scales move) trains through
    ZOTrainer(holder=...); a streamed model's save reads its weights from the store."""
    from forwardonly.lm.config import OffloadConfig
    from forwardonly.lm.holders import Holder
    from forwardonly.models import apply_scheme
    from forwardonly.quant import QuantConfig

    torch.set_num_threads(1)
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    ds = _Sentences(tok)
    extra = {"offload": OffloadConfig(tier="memory")} if how == "offload" else {"quant": QuantConfig(group_size=16)}
    holder = Holder(name=str(tmp_path / "tiny"), **extra)
    held, _ = holder.load()
    held = apply_scheme(held, "full" if how == "offload" else "scales")
    before = {n: p.detach().clone() for n, p in held.named_parameters()} if how == "quant" else None
    args = _args(tmp_path / "out", max_steps=3, save_strategy="steps", save_steps=3)
    ZOTrainer(model=held, args=args, train_dataset=ds, zo_kwargs={"seed": 2}, holder=holder).train()
    if how == "quant":
        moved = [n for n, p in held.named_parameters() if not torch.equal(p, before[n])]
        assert moved and all("scale" in n for n in moved)
        return
    ZOTrainer(model=model, args=_args(tmp_path / "mem", max_steps=3), train_dataset=ds,
              zo_kwargs={"seed": 2}).train()
    from safetensors.torch import load_file

    saved = load_file(str(next((tmp_path / "out").glob("checkpoint-3")) / "model.safetensors"))
    for n, p in model.named_parameters():
        assert torch.equal(saved[n], p.detach()), n
