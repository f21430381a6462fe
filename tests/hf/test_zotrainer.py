"""ZOTrainer: the Hugging Face Trainer's loop with zeroth-order steps."""

import torch

from forwardonly.hf import ZOTrainer
from forwardonly.models import tiny_model


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
    assert zs["forwards"] == 40 * 2 * 2  # evaluations: steps x two-sided x q (each over both micro-batches)
    assert all(p.grad is None for p in model.parameters())  # nothing ran backward
    assert _loss(model, ds) < 0.95 * before


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
