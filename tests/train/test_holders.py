"""How a run holds its model (model.quant, model.offload, model.precision) through `forwardonly train`/`eval`."""

import json

import pytest
import torch

from forwardonly.cli.main import main
from forwardonly.errors import UserError
from forwardonly.lm.train import replay_seedlog, run

QUIET = ("test=false", "validate=false")


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_quantized_run_trains_only_the_scales_and_resumes_and_replays(cfg_of, tmp_path):
    """model.quant + scheme.name=scales (QZO): the codes and every other weight stay bitwise, the scales move;
    a resumed run and the seed-log replay end bitwise where the straight run ends."""
    quant = ("model.quant.bits=4", "model.quant.group_size=16", "scheme.name=scales", "optim.lr=1e-2", "optim.q=2")
    base = run(cfg_of("steps=0", *quant, *QUIET), progress=False)["model"]
    before = _weights(base)
    codes = {n: b.clone() for n, b in base.named_buffers()}
    straight = run(cfg_of("steps=6", *quant, *QUIET, f"out_dir={tmp_path / 'a'}"), progress=False)
    after = _weights(straight["model"])
    moved = [n for n in after if not torch.equal(after[n], before[n])]
    assert moved and all("scale" in n for n in moved)
    assert all(torch.equal(b, codes[n]) for n, b in straight["model"].named_buffers() if n in codes)
    # interrupted at step 3, resumed
    run(cfg_of("steps=3", *quant, *QUIET, "save_every=3", f"out_dir={tmp_path / 'b'}"), progress=False)
    resumed = run(cfg_of("steps=6", *quant, *QUIET, f"out_dir={tmp_path / 'b'}"), resume=True, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(after.values(), _weights(resumed["model"]).values()))
    replayed, _ = replay_seedlog(tmp_path / "a" / "seedlog.json")
    assert all(torch.equal(after[n], p.detach()) for n, p in replayed.named_parameters())


def test_streamed_run_is_bitwise_the_in_memory_run(cfg_of, tmp_path):
    """model.offload: the blocks stream from a disk tier; weights, losses and checkpoint equal the in-memory run."""
    common = ("steps=4", "optim.lr=1e-2", "scheme.name=full", *QUIET)
    mem = run(cfg_of(*common, f"out_dir={tmp_path / 'mem'}"), progress=False)
    streamed = run(cfg_of(*common, "model.offload.tier=disk", f"out_dir={tmp_path / 'disk'}"), progress=False)
    assert [h["loss"] for h in streamed["history"]] == [h["loss"] for h in mem["history"]]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "mem" / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "disk" / "checkpoint" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "disk" / "offload").is_dir()  # the working copy lives in the run directory


def test_streamed_run_resumes_bitwise(cfg_of, tmp_path):
    common = ("optim.lr=1e-2", "scheme.name=full", "model.offload.tier=memory", *QUIET)
    run(cfg_of("steps=4", *common, f"out_dir={tmp_path / 'a'}"), progress=False)
    run(cfg_of("steps=2", *common, "save_every=2", f"out_dir={tmp_path / 'b'}"), progress=False)
    run(cfg_of("steps=4", *common, f"out_dir={tmp_path / 'b'}"), resume=True, progress=False)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "trainable.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_of_a_streamed_run_scores_its_checkpoint(ov, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["train", "--no-progress", *ov("steps=3", "optim.lr=1e-2", "model.offload.tier=disk",
                                               "validate=false", f"out_dir={out}")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--no-progress", "--run", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == summary["test_after"]["accuracy"]


def test_mixed_precision_run_keeps_bf16_weights_and_learns(cfg_of):
    s = run(cfg_of("steps=6", "model.dtype=bfloat16", "model.precision=mixed", "optim.lr=1e-2", *QUIET),
            progress=False)
    assert all(p.dtype == torch.bfloat16 for p in s["model"].parameters())
    assert s["skipped_steps"] == 0 and all(h["loss"] == h["loss"] for h in s["history"])


@pytest.mark.parametrize("override, msg", [
    (["model.quant.bits=3"], "model.quant.bits=3 is not supported"),
    (["scheme.name=scales"], "scheme.name=scales trains the quantization scales: set model.quant"),
    (["model.offload.tier=disk", "optim.name=zo-adam"], "model.offload streams plain or sign ZO-SGD steps"),
    (["model.offload.tier=disk", "scheme.name=lora"], "scheme.name=lora .PEFT. is not supported"),
    (["model.offload.tier=tape"], "model.offload.tier='tape' is not one of"),
    (["model.precision=mixed"], "model.precision=mixed keeps bfloat16/float16 weights"),
    (["model.quant.bits=4", "model.offload.tier=disk"], "model.quant and model.offload cannot be combined"),
])
def test_holder_config_errors_are_one_line(cfg_of, override, msg):
    with pytest.raises(UserError, match=msg) as e:
        cfg_of(*override)
    assert "\n" not in str(e.value)
