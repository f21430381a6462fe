"""Streamed ZO-SGD against the in-memory ZOSGD: same seeds, bit-identical weights."""

import hashlib
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from forwardonly.models.tiny import tiny_config
from forwardonly.offload import BlockStreamer, StreamedZO, WeightStore, empty_model, find_blocks
from forwardonly.optim import ZOSGD

transformers = pytest.importorskip("transformers")
AutoModelForCausalLM = transformers.AutoModelForCausalLM


def llama4():
    """4 layers, hidden 64, untied head."""
    return transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                                    max_position_embeddings=128, tie_word_embeddings=False)


def build(config, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).float().eval()


def write(model, path):
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def ids_for(config, batch=2, seq=12, seed=1):
    return torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def lm_closure(model, ids, accum=1):
    if accum == 1:
        return lambda: model(input_ids=ids, labels=ids).loss
    return lambda i: model(input_ids=ids[i::accum], labels=ids[i::accum]).loss


def run_pair(tmp_path, config, steps=3, tier="disk", mode=None, opt_kw=None, groups=None, batch=2, fused=None):
    """``steps`` ZO steps in memory and streamed from the same file and seed."""
    opt_kw = dict(lr=1e-2, eps=1e-3, seed=7, **(opt_kw or {}))
    if fused is not None:  # the optimizer's fused perturbation path, or whole copies
        opt_kw["impl"] = "auto" if fused else "plain"
    accum = opt_kw.get("accum_steps", 1)
    ids = ids_for(config, batch=batch)
    ref = build(config)
    src = write(ref, tmp_path / "model.safetensors")
    ropt = ZOSGD(groups(ref) if groups else ref.parameters(), **opt_kw)
    ref_losses = [ropt.step(lm_closure(ref, ids, accum)).item() for _ in range(steps)]

    model = empty_model(lambda: AutoModelForCausalLM.from_config(config)).eval()
    store = WeightStore(src, workdir=tmp_path / "work", tier=tier)
    opt = ZOSGD(groups(model) if groups else model.parameters(), **opt_kw)
    zo = StreamedZO(model, opt, store, mode=mode)
    losses = [zo.step(lm_closure(model, ids, accum)).item() for _ in range(steps)]
    return ref, ropt, ref_losses, model, opt, zo, losses


def assert_bitwise(model, ref):
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p.data, q.data), n


@pytest.mark.parametrize("tier,mode", [("disk", "map"), ("disk", "copy"), ("memory", "copy"), ("memory", "map")])
def test_streamed_run_is_bitwise_the_in_memory_run(tmp_path, tier, mode):
    ref, ropt, ref_losses, model, opt, zo, losses = run_pair(
        tmp_path, llama4(), steps=4, tier=tier, mode=mode, opt_kw=dict(weight_decay=0.1))
    assert losses == ref_losses
    assert zo.pending  # the last step's update waits for the blocks' next trip
    zo.close()
    assert_bitwise(model, ref)
    for key in ("step", "forwards", "skipped", "last_grads"):
        assert opt.zo_state[key] == ropt.zo_state[key], key


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2", "opt"])
def test_any_decoder_streams_bitwise(tmp_path, arch):
    ref, _, ref_losses, model, _, zo, losses = run_pair(tmp_path, tiny_config(arch), steps=2)
    assert losses == ref_losses
    zo.close()
    assert_bitwise(model, ref)


@pytest.mark.parametrize("fused", [True, False])
def test_wide_layers_bitwise(tmp_path, fused):
    """Weights larger than one block of the optimizer's fused linear (where it has one), and without it."""
    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=2560, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                                      max_position_embeddings=64, tie_word_embeddings=True)
    ref, _, ref_losses, model, _, zo, losses = run_pair(tmp_path, config, steps=2, fused=fused)
    assert losses == ref_losses
    zo.close()
    assert_bitwise(model, ref)


def test_probes_accumulation_sign_and_groups_bitwise(tmp_path):
    def groups(m):
        blocks = [p for n, p in m.named_parameters() if ".layers." in n]
        rest = [p for n, p in m.named_parameters() if ".layers." not in n]
        return [{"params": blocks, "lr": 2e-2}, {"params": rest, "lr": 5e-3, "weight_decay": 0.01}]

    ref, ropt, ref_losses, model, opt, zo, losses = run_pair(
        tmp_path, llama4(), steps=2, opt_kw=dict(q=2, accum_steps=2, sign=True), groups=groups, batch=4)
    assert losses == ref_losses
    zo.close()
    assert_bitwise(model, ref)
    assert opt.zo_state["forwards"] == ropt.zo_state["forwards"] == 2 * 2 * 2 * 2


def test_learning_rate_schedule_applies_to_the_step_that_made_the_update(tmp_path):
    """The deferred update uses the lr of its own step even when a scheduler changed it since."""
    config = llama4()
    ref, ropt, _, model, opt, zo, _ = run_pair(tmp_path, config, steps=1)
    ids = ids_for(config)
    for lr in (3e-2, 0.0, 1e-2):
        for o in (ropt, opt):
            for g in o.param_groups:
                g["lr"] = lr
        assert zo.step(lm_closure(model, ids)).item() == ropt.step(lm_closure(ref, ids)).item()
    zo.close()
    assert_bitwise(model, ref)


def test_each_block_travels_once_per_step_and_alone(tmp_path):
    _, _, _, model, _, zo, _ = run_pair(tmp_path, llama4(), steps=1)
    s = zo.streamer
    loads, resident_max = [], [0]
    acquire = s.acquire

    def spy(i):
        if not s.blocks[i].resident:
            loads.append(i)
        acquire(i)
        resident_max[0] = max(resident_max[0], sum(b.resident for b in s.blocks))

    s.acquire = spy
    ids = ids_for(llama4())
    for _ in range(3):
        zo.step(lm_closure(model, ids))
    assert loads == [0, 1, 2, 3] * 3
    assert resident_max[0] == 1
    assert all(not b.resident for b in s.blocks)
    zo.close()


def test_eval_forward_sees_pending_updates(tmp_path):
    ref, _, _, model, _, zo, _ = run_pair(tmp_path, llama4(), steps=2)
    ids = ids_for(llama4(), seed=5)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    assert not zo.pending
    zo.close(materialize=False)


def test_save_writes_current_weights_and_leaves_source_alone(tmp_path):
    config = llama4()
    src = write(build(config), tmp_path / "model.safetensors")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    ref, _, _, model, _, zo, _ = run_pair(tmp_path, config, steps=2)
    zo.save(tmp_path / "out" / "trained.safetensors")
    saved = load_file(str(tmp_path / "out" / "trained.safetensors"))
    for n, p in ref.state_dict().items():
        assert torch.equal(saved[n], p), n
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["trained.safetensors"]  # no temporaries left
    zo.close(materialize=False)


def test_resume_from_a_saved_checkpoint_is_bitwise_the_uninterrupted_run(tmp_path):
    config = llama4()
    ref, ropt, _, model, opt, zo, _ = run_pair(tmp_path, config, steps=2)
    zo.save(tmp_path / "ckpt" / "weights.safetensors")
    state = opt.state_dict()
    zo.close(materialize=False)
    ids = ids_for(config)
    model2 = empty_model(lambda: AutoModelForCausalLM.from_config(config)).eval()
    opt2 = ZOSGD(model2.parameters(), lr=1e-2, eps=1e-3, seed=7)
    opt2.load_state_dict(state)
    zo2 = StreamedZO(model2, opt2, WeightStore(tmp_path / "ckpt" / "weights.safetensors", tmp_path / "work2"))
    for _ in range(2):
        assert zo2.step(lm_closure(model2, ids)).item() == ropt.step(lm_closure(ref, ids)).item()
    zo2.close()
    assert_bitwise(model2, ref)


def test_close_removes_every_hook_and_restores_the_model(tmp_path):
    config = llama4()
    ref, _, _, model, _, zo, _ = run_pair(tmp_path, config, steps=2)
    assert any(m._forward_pre_hooks for m in model.modules())
    zo.close()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    ids = ids_for(config, seed=3)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    zo.close()  # idempotent


def test_error_in_a_forward_unwinds_both_and_keeps_parity(tmp_path):
    config = llama4()
    ref, ropt, _, model, _, zo, _ = run_pair(tmp_path, config, steps=1)
    ids = ids_for(config)
    fail = [True]

    def boom(module, args):  # the -eps forward fails halfway through the model
        if fail[0] and threading.current_thread().name == "forwardonly-minus-eps":
            raise OSError("disk gone")

    handle = model.model.layers[2].register_forward_pre_hook(boom)
    with pytest.raises(OSError, match="disk gone"):
        zo.step(lm_closure(model, ids))
    fail[0] = False
    handle.remove()
    assert all(not b.resident for b in zo.streamer.blocks)
    assert not [t for t in threading.enumerate() if t.name == "forwardonly-minus-eps"]
    for _ in range(2):  # the failed step changed nothing: parity holds from here on
        ropt.step(lm_closure(ref, ids))
        zo.step(lm_closure(model, ids))
    zo.close()
    assert_bitwise(model, ref)


@pytest.mark.parametrize("kw,match", [(dict(momentum=0.9), "momentum"), (dict(conservative=True), "conservative"),
                                      (dict(two_sided=False), "two-sided")])
def test_rejects_what_cannot_stream(tmp_path, kw, match):
    config = llama4()
    src = write(build(config), tmp_path / "model.safetensors")
    model = empty_model(lambda: AutoModelForCausalLM.from_config(config))
    store = WeightStore(src, workdir=tmp_path / "work")
    with pytest.raises(ValueError, match=match):
        StreamedZO(model, ZOSGD(model.parameters(), lr=1e-3, **kw), store)
    assert not any(m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("arch,name", [("llama", "model.layers"), ("gpt2", "transformer.h"),
                                       ("opt", "model.decoder.layers"), ("gemma3", "model.layers")])
def test_find_blocks(arch, name):
    model = empty_model(lambda: AutoModelForCausalLM.from_config(tiny_config(arch)))
    found, stack = find_blocks(model)
    assert found == name and len(stack) == 2


def test_streamer_alone_runs_inference_one_block_at_a_time(tmp_path):
    config = llama4()
    ref = build(config)
    src = write(ref, tmp_path / "model.safetensors")
    model = empty_model(lambda: AutoModelForCausalLM.from_config(config)).eval()
    streamer = BlockStreamer(model, WeightStore(src, workdir=tmp_path / "work")).attach()
    ids = ids_for(config)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    assert all(not b.resident for b in streamer.blocks)
    assert torch.isnan(model.model.layers[0].mlp.up_proj.weight).all()  # a placeholder, not stale weights
    streamer.detach()
    assert_bitwise(model, ref)
