"""The streamer's CUDA path (side stream, events, write-backs) run on the CPU through ThreadStreams.

ThreadStreams mimics CUDA's asynchrony: copies run on their own threads, lazily (only when
something waits for them) or late (``delay_s``), and a copy into or out of memory the compute
stream released without a wait on that release raises HazardError. The streamed ZO run through
it must be bitwise the in-memory run; with any one of the streamer's waits taken away it must not
be (each mutation below drops one kind of wait and shows the failure the tests would report).
"""

import pytest
import torch

from forwardonly.offload import BlockStreamer, WeightStore
from forwardonly.offload import stream as stream_mod
from forwardonly.offload.device import HazardError, Streams, ThreadStreams

test_streamed_zo = pytest.importorskip("test_streamed_zo")  # this folder's helpers (tiny Llama, run_pair)


class NoComputeWait(ThreadStreams):
    """The compute stream never waits for a copy in: it reads the slot before the weights arrive."""

    def wait(self, event, stream=None):
        if stream is not None:
            super().wait(event, stream)


class NoCopyStreamWait(ThreadStreams):
    """The copy stream never waits for the compute stream's release of a slot."""

    def wait(self, event, stream=None):
        if stream is None:
            super().wait(event, stream)


class NoSynchronize(ThreadStreams):
    """sync() returns before the write-backs have reached the store."""

    def synchronize(self, stream):
        pass


def streamed_pair(tmp_path, monkeypatch, streams: Streams, steps=3):
    monkeypatch.setattr(stream_mod, "default_streams", lambda device: streams)
    return test_streamed_zo.run_pair(tmp_path, test_streamed_zo.llama4(), steps=steps, tier="memory", mode="copy",
                                     opt_kw={"weight_decay": 0.1})


@pytest.mark.parametrize("streams", [ThreadStreams(lazy=True), ThreadStreams(delay_s=0.002)], ids=["lazy", "late"])
def test_streamed_zo_through_the_stand_in_is_bitwise_the_in_memory_run(tmp_path, monkeypatch, streams):
    ref, _, ref_losses, model, _, zo, losses = streamed_pair(tmp_path, monkeypatch, streams)
    assert zo.streamer._streams is streams and streams.copies > 0  # the asynchronous path ran
    assert losses == ref_losses
    zo.close()
    test_streamed_zo.assert_bitwise(model, ref)
    streams.close()


def test_a_missing_compute_wait_reads_stale_weights(tmp_path, monkeypatch):
    streams = NoComputeWait(lazy=True)
    _, _, ref_losses, _, _, _, losses = streamed_pair(tmp_path, monkeypatch, streams, steps=2)
    assert losses != ref_losses
    streams.close()


def test_a_missing_copy_stream_wait_is_a_hazard(tmp_path, monkeypatch):
    streams = NoCopyStreamWait(lazy=True)
    with pytest.raises(RuntimeError) as e:
        streamed_pair(tmp_path, monkeypatch, streams, steps=2)
    chain, err = [], e.value
    while err is not None:
        chain.append(err)
        err = err.__cause__
    assert any(isinstance(x, HazardError) for x in chain), chain
    streams.close()


def test_a_missing_synchronize_loses_write_backs(tmp_path, monkeypatch):
    streams = NoSynchronize(lazy=True)
    ref, _, ref_losses, model, _, zo, losses = streamed_pair(tmp_path, monkeypatch, streams, steps=2)
    assert losses == ref_losses  # every read waited for its copy in
    zo.close()
    differ = [n for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters())
              if not torch.equal(p.data, q.data)]
    assert differ  # the last write-backs were still queued when close() read the store
    streams.close()


def test_inference_streams_through_the_stand_in(tmp_path):
    """BlockStreamer alone, in copy mode on the CPU with streams given: the same logits."""
    cfg = test_streamed_zo.llama4()
    ref = test_streamed_zo.build(cfg)
    src = test_streamed_zo.write(ref, tmp_path / "m.safetensors")
    ids = test_streamed_zo.ids_for(cfg)
    model = test_streamed_zo.build(cfg, seed=1)
    streams = ThreadStreams(lazy=True)
    streamer = BlockStreamer(model, WeightStore(src, tier="memory"), mode="copy", streams=streams).attach()
    with torch.no_grad():
        got = model(input_ids=ids).logits
        want = ref(input_ids=ids).logits
    streamer.detach()
    assert torch.equal(got, want) and streams.copies > 0
    streams.close()


def test_thread_streams_order_copies_and_events():
    s = ThreadStreams(lazy=True)
    side = s.new_stream()
    src, dst = torch.arange(4.0), torch.zeros(4)
    s.copy(dst, src, side)
    ev = s.record(side)
    assert torch.equal(dst, torch.zeros(4))  # lazy: nothing has run yet
    s.wait(ev)  # the host waits: the copy runs first
    assert torch.equal(dst, src)
    released = s.released(dst)
    with pytest.raises(HazardError, match="without waiting"):
        s.copy(dst, src, side)
    s.wait(released, side)
    s.copy(dst, src + 1, side)  # now ordered after the release
    s.synchronize(side)
    assert torch.equal(dst, src + 1)
    s.close()
