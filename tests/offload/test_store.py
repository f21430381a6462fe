"""WeightStore: bad files and tiers without room fail before anything is copied or trained."""

import hashlib
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from forwardonly.errors import UserError
from forwardonly.offload import StreamedZO, TierCapacityError, WeightsFileError, WeightStore, empty_model
from forwardonly.optim import ZOSGD

transformers = pytest.importorskip("transformers")


def tensors():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(8, 16, generator=g), "b.bias": torch.randn(5, generator=g),
            "c.half": torch.randn(4, 4, generator=g).bfloat16()}


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(tensors(), str(path))
    return path


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("tier", ["disk", "memory"])
def test_store_holds_the_file_and_writes_go_to_the_working_copy(good, tmp_path, tier):
    before = digest(good)
    store = WeightStore(good, workdir=tmp_path / "work", tier=tier)
    for k, v in tensors().items():
        assert torch.equal(store.tensor(k), v)
    store.tensor("a.weight").add_(1.0)
    store.write_from("b.bias", torch.zeros(5))
    out = torch.empty(5)
    store.read_into("b.bias", out)
    assert torch.equal(out, torch.zeros(5))
    store.save(tmp_path / "out.safetensors")
    saved = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(saved["a.weight"], tensors()["a.weight"] + 1.0)
    assert torch.equal(saved["c.half"], tensors()["c.half"])
    assert digest(good) == before  # the user's file is only read
    store.close()


def corrupt(path, how):
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    if how == "truncated":
        del raw[-10:]
    elif how == "header":
        raw[8:12] = b"\x00{[!"
    elif how == "length":
        raw[:8] = struct.pack("<Q", len(raw) * 2)
    elif how == "offsets":
        header = json.loads(raw[8:8 + n])
        header["a.weight"]["data_offsets"][1] += 4
        text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
        assert len(text) == n
        raw[8:8 + n] = text
    elif how == "nan":
        header = json.loads(raw[8:8 + n])
        start = 8 + n + header["b.bias"]["data_offsets"][0]
        raw[start:start + 4] = struct.pack("<f", float("nan"))
    elif how == "empty":
        raw = bytearray(b"\x01\x02")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how,match", [("truncated", "truncated"), ("header", "corrupt safetensors header"),
                                       ("length", "header length"), ("offsets", "does not match its size"),
                                       ("nan", "NaN or Inf"), ("empty", "too short")])
@pytest.mark.parametrize("tier", ["disk", "memory"])
def test_bad_file_fails_before_anything_is_written(good, tmp_path, how, match, tier):
    corrupt(good, how)
    before = digest(good)
    work = tmp_path / "work"
    with pytest.raises(WeightsFileError, match=match) as err:
        WeightStore(good, workdir=work, tier=tier)
    assert str(good) in str(err.value) and isinstance(err.value, UserError)
    assert digest(good) == before
    assert not work.exists() or not any(work.iterdir())


def test_missing_file(tmp_path):
    with pytest.raises(WeightsFileError, match="no such weights file"):
        WeightStore(tmp_path / "nope.safetensors", workdir=tmp_path / "work")


@pytest.mark.parametrize("tier", ["disk", "memory"])
def test_too_large_for_the_tier(good, tmp_path, tier):
    work = tmp_path / "work"
    with pytest.raises(TierCapacityError, match="bytes"):
        WeightStore(good, workdir=work, tier=tier, capacity=100)
    assert not work.exists() or not any(work.iterdir())


def test_model_that_does_not_match_the_file(tmp_path):
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=100)
    small = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    save_file({k: v.clone() for k, v in small.state_dict().items()}, str(tmp_path / "m.safetensors"))
    cfg["intermediate_size"] = 96
    model = empty_model(lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)))
    store = WeightStore(tmp_path / "m.safetensors", workdir=tmp_path / "work")
    with pytest.raises(ValueError, match=r"mlp.*\[64, 32\]"):
        StreamedZO(model, ZOSGD(model.parameters(), lr=1e-3), store)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_too_large_for_the_working_device(tmp_path):
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=100)
    small = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    save_file({k: v.clone() for k, v in small.state_dict().items()}, str(tmp_path / "m.safetensors"))
    model = empty_model(lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)))
    store = WeightStore(tmp_path / "m.safetensors", workdir=tmp_path / "work", tier="memory")
    with pytest.raises(TierCapacityError, match="two blocks"):
        StreamedZO(model, ZOSGD(model.parameters(), lr=1e-3), store, mode="copy", capacity=1000)
    assert not any(m._forward_pre_hooks for m in model.modules())


_PEAK_SCRIPT = """
import sys
from forwardonly.offload import WeightStore

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

# first use of the store (lazy imports, the kernel's load) on a small file, so that only the big file counts
WeightStore(sys.argv[4], sys.argv[2] + "-warm", tier=sys.argv[3])
before = hwm()
store = WeightStore(sys.argv[1], sys.argv[2], tier=sys.argv[3])
print(hwm() - before)
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("tier", ["disk", "memory"])
def test_validating_the_file_does_not_hold_it_in_memory(tmp_path, tier):
    """The finite-values scan reads the whole file through a mapping; its pages must not stay mapped (they would
    count in the run's peak RSS: a 4 GiB model's streamed run peaked above the in-memory one's)."""
    import subprocess
    import sys

    n, size = 16, 4 << 20  # 16 tensors of 4 MiB: 64 MiB of weights
    save_file({f"w{i}": torch.full((size // 4,), float(i)) for i in range(n)}, str(tmp_path / "big.safetensors"))
    save_file({"w0": torch.ones(16)}, str(tmp_path / "small.safetensors"))
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path / "big.safetensors"), str(tmp_path / "w"),
                          tier, str(tmp_path / "small.safetensors")], capture_output=True, text=True, check=True)
    growth = int(out.stdout.split()[-1])
    held = 0 if tier == "disk" else n * size  # the memory tier holds a copy, by design
    # one tensor's pages (4 MiB) at a time plus the scan's temporaries, not the 64 MiB file
    assert growth - held < 24 << 20, f"peak RSS grew by {growth / 2**20:.1f} MiB while building the {tier} store"
