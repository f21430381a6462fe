"""The native Rademacher kernel and the step-level word hold: same values as the torch path, bit for bit."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from forwardonly.optim import ZOSGD
from forwardonly.optim.perturb import CHUNK, HOLD_BYTES, Directions
from forwardonly.optim.perturb import native as _native

needs_native = pytest.mark.skipif(not _native.status()["available"],
                                  reason=f"native kernel unavailable: {_native.status()['reason']}")


@pytest.fixture
def torch_path(monkeypatch):
    """Run the body with the kernel switched off (the torch fallback), then restore it."""
    def off():
        monkeypatch.setitem(_native._STATE, "lib", None)
    return off


def _range(d, numel, start, n, terms, src):
    out = torch.empty(n)
    d.perturb_range(out, src, 5, terms, 3, numel, start)
    d.release()
    return out


@needs_native
@pytest.mark.parametrize("numel,start,n", [
    (17, 0, 17), (100, 3, 90), (CHUNK, 5, CHUNK - 5), (3 * CHUNK + 11, 0, 3 * CHUNK + 11),
    (2 * CHUNK + 999, CHUNK - 3, CHUNK + 7), (CHUNK + 64, CHUNK - 64, 128), (1000, 999, 1),
])
def test_kernel_equals_the_torch_path(numel, start, n, torch_path):
    d = Directions(seed=11)
    g = torch.Generator().manual_seed(numel + start)
    src = torch.randn(n, generator=g) * 3
    terms = [(0, 1e-3), (1, -2.5e-4), (4, 7.0)]
    native = _range(d, numel, start, n, terms, src)
    torch_path()
    reference = _range(d, numel, start, n, terms, src)
    assert torch.equal(native, reference)
    # and the values are src + sum_k coef_k z_k with z_k = +-1 from the whole direction
    z = [d.full(torch.empty(numel), 5, k, 3).view(-1)[start : start + n] for k, _ in terms]
    expect = src.clone()
    for (_, c), zk in zip(terms, z):
        expect.add_(zk, alpha=c)
    assert torch.equal(native, expect)


@needs_native
def test_kernel_in_place_update_equals_torch_path(torch_path):
    w = torch.randn(2 * CHUNK + 77, generator=torch.Generator().manual_seed(0))
    a, b = w.clone(), w.clone()
    Directions(seed=2).add_(a, 9, [(0, -1e-2), (1, 3e-3)], 0)
    torch_path()
    Directions(seed=2).add_(b, 9, [(0, -1e-2), (1, 3e-3)], 0)
    assert torch.equal(a, b) and not torch.equal(a, w)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("FORWARDONLY_NATIVE", "0")
    _native.reset()
    try:
        st = _native.status()
        assert not st["available"] and "FORWARDONLY_NATIVE" in st["reason"]
        x = torch.zeros(10)
        assert _native.sign_add_f32(x, x, torch.zeros(1, dtype=torch.int64), 0, 1.0) is False
    finally:
        monkeypatch.delenv("FORWARDONLY_NATIVE")
        _native.reset()


def test_no_compiler_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("FORWARDONLY_CACHE", str(tmp_path))
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    _native.reset()
    try:
        st = _native.status()
        assert not st["available"] and "compiler" in st["reason"]
        # the torch path still perturbs
        d = Directions(seed=1)
        out = torch.empty(100)
        d.perturb_range(out, torch.zeros(100), 0, [(0, 0.5)], 0, 100, 0)
        assert set(out.unique().tolist()) == {-0.5, 0.5}
    finally:
        _native.reset()


def test_hold_keeps_words_once_per_step_and_is_bounded(monkeypatch):
    from forwardonly.optim.perturb import directions as _directions

    d = Directions(seed=4)
    p = torch.zeros(3 * CHUNK)
    calls = []
    real = _directions.random_words

    def counting(out, seed):
        calls.append(out.numel())
        return real(out, seed)

    monkeypatch.setattr(_directions, "random_words", counting)
    with d.hold():
        for _ in range(3):  # +eps, -eps, update
            d.add_(p, 0, [(0, 1.0)], 0)
    assert len(calls) == 3  # one draw per chunk, not one per pass
    assert not d._recent  # released when the hold ends
    calls.clear()
    for _ in range(2):
        d.add_(p, 0, [(0, 1.0)], 0)
    assert len(calls) == 6  # without a hold every pass draws again
    assert HOLD_BYTES <= 64 << 20


@needs_native
def test_kernel_draws_torchs_random_words():
    """The kernel's MT19937 gives the words of torch's CPU generator, bit for bit, for any seed and length."""
    from forwardonly.optim.perturb.seeds import chunk_seed

    assert _native.status()["words"]
    seeds = [0, 1, 5489, 2**32 + 7, 2**63 - 1] + [chunk_seed(3, s, k, i, 0) for s in range(4) for k in range(2)
                                                   for i in range(3)]
    for seed in seeds:
        for n in (1, 311, 312, 313, 16384):
            gen = torch.Generator().manual_seed(seed)
            ref = torch.empty(n, dtype=torch.int64).random_(-(2**63), None, generator=gen)
            out = torch.empty(n, dtype=torch.int64)
            assert _native.random_words(out, seed)
            assert torch.equal(out, ref), (seed, n)


def _tiny_llama(tied=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).float().eval()


def _run(defer, steps=6, tied=True, **kw):
    m = _tiny_llama(tied)
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    opt = ZOSGD(m.parameters(), lr=5e-2, eps=1e-3, seed=3, defer_update=defer, **kw)
    losses = [float(opt.step(lambda: m(input_ids=ids, labels=ids).loss)) for _ in range(steps)]
    return m, opt, losses, ids


@pytest.mark.parametrize("kw", [{}, {"q": 2}, {"two_sided": False}, {"tied": False}])
def test_deferred_update_is_bitwise_the_immediate_one(kw):
    kw = dict(kw)
    tied = kw.pop("tied", True)
    m1, o1, l1, _ = _run(False, tied=tied, **kw)
    m2, o2, l2, _ = _run(True, tied=tied, **kw)
    assert l1 == l2
    # before flush the deferred model lags one update behind; after it, bitwise equal
    assert o2.pending
    assert not all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    o2.flush()
    assert not o2.pending
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_deferred_state_dict_flushes_and_resume_is_exact():
    m1, o1, _, ids = _run(False, steps=4)
    m2, o2, _, _ = _run(True, steps=4)
    sd = o2.state_dict()  # flushes
    assert not o2.pending
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    m3 = _tiny_llama()
    m3.load_state_dict(m2.state_dict())
    o3 = ZOSGD(m3.parameters(), lr=5e-2, eps=1e-3, seed=3, defer_update=True)
    o3.load_state_dict(sd)
    for m, o in ((m1, o1), (m3, o3)):
        for _ in range(3):
            o.step(lambda m=m: m(input_ids=ids, labels=ids).loss)
    o3.flush()
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m3.parameters()))


def test_deferred_update_survives_a_failing_forward():
    m1, o1, _, ids = _run(False, steps=2)
    m2, o2, _, _ = _run(True, steps=2)

    def boom():
        m2.model.embed_tokens(ids)  # the embedding settles its update, then the closure fails
        raise RuntimeError("closure failed")

    with pytest.raises(RuntimeError, match="closure failed"):
        o2.step(boom)
    assert not o2.pending  # every pending update was applied on the way out, once
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_defer_update_rejects_variants_that_cannot_defer():
    p = [torch.nn.Parameter(torch.zeros(3))]
    for kw in ({"momentum": 0.9}, {"sign": True}, {"conservative": True}):
        with pytest.raises(ValueError, match="defer_update"):
            ZOSGD(p, lr=0.1, defer_update=True, **kw)


@needs_native
@pytest.mark.parametrize("openmp", [True, False])
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_kernel_split_over_threads_gives_the_same_values(threads, openmp, monkeypatch):
    """Split in torch's OpenMP team or in the Python pool: the same values as one thread, bit for bit."""
    if openmp and not _native.status()["openmp"]:
        pytest.skip("the kernel does not share torch's OpenMP runtime here")
    monkeypatch.setitem(_native._STATE, "openmp", openmp)
    piece = _native.PIECE if openmp else _native.POOL_PIECE
    n = 5 * piece + 123
    g = torch.Generator().manual_seed(3)
    src = torch.randn(n, generator=g)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 7 + 63) // 64,), dtype=torch.int64, generator=g)
    words_b = torch.randint(-(2**63), 2**63 - 1, ((n + 7 + 63) // 64,), dtype=torch.int64, generator=g)
    one, many = torch.empty(n), torch.empty(n)
    assert _native.sign_add_f32(one, src, words, 7, 0.25, threads=1)
    assert _native.sign_add_f32(many, src, words, 7, 0.25, threads=threads)
    assert torch.equal(one, many)
    inplace = src.clone()
    _native.sign_add_f32(inplace, inplace, words, 7, 0.25, threads=threads)
    assert torch.equal(inplace, one)
    # and the one-pass fold (w += a z_a; out = w + b z_b)
    w1, w2, o1, o2 = src.clone(), src.clone(), torch.empty(n), torch.empty(n)
    assert _native.sign_add2_f32(w1, o1, words, words_b, 7, -1e-3, 0.5, threads=1)
    assert _native.sign_add2_f32(w2, o2, words, words_b, 7, -1e-3, 0.5, threads=threads)
    assert torch.equal(w1, w2) and torch.equal(o1, o2) and not torch.equal(w1, src)


@pytest.mark.skipif(not (sys.platform.startswith("linux") and torch.backends.openmp.is_available()),
                    reason="the OpenMP runtime is looked up in /proc/self/maps, with torch built with OpenMP")
@needs_native
def test_kernel_runs_in_torchs_openmp_runtime():
    """Built against the runtime torch loaded, and loading it brought no runtime of its own (whose team
    would compete with torch's threads for the cores). Other libraries may have loaded theirs (scikit-learn
    ships its own libgomp): the kernel still links and splits on torch's."""
    st = _native.status()
    runtime = _native._torch_openmp()
    if runtime is None:
        pytest.skip("no way to tell which OpenMP runtime torch uses in this process")
    assert st["openmp"], st  # split calls run in torch's team (loading the kernel added no runtime)
    if shutil.which("readelf"):
        needed = subprocess.run(["readelf", "-d", st["path"]], capture_output=True, text=True, check=False).stdout
        assert os.path.basename(runtime).split(".so")[0] in needed


@needs_native
@pytest.mark.parametrize("numel,start,n", [
    (17, 0, 17), (100, 3, 90), (CHUNK + 400, CHUNK - 100, 300), (3 * CHUNK + 11, 5, 2 * CHUNK + 3), (1000, 999, 1),
])
def test_fold_perturb_is_two_perturb_ranges_bit_for_bit(numel, start, n, torch_path):
    """The one-pass deferred update + perturbation (fo_sign_add2_f32) gives exactly what two passes give,
    on the weights it writes back and on the perturbed block, and so does its fallback without the kernel."""
    d = Directions(seed=5)
    g = torch.Generator().manual_seed(n + start)
    w0 = torch.randn(n, generator=g)

    def two_passes():
        w, out = w0.clone(), torch.empty(n)
        d.perturb_range(w, w, 6, [(0, -3e-4)], 2, numel, start)
        d.perturb_range(out, w, 7, [(0, 1e-3)], 2, numel, start)
        d.release()
        return w, out

    def one_pass():
        w, out = w0.clone(), torch.empty(n)
        d.fold_perturb_range(out, w, 6, [(0, -3e-4)], 7, [(0, 1e-3)], 2, numel, start)
        d.release()
        return w, out

    (wa, oa), (wb, ob) = two_passes(), one_pass()
    assert torch.equal(wa, wb) and torch.equal(oa, ob)
    assert not torch.equal(wa, w0) and not torch.equal(oa, wa)
    torch_path()
    wc, oc = one_pass()
    assert torch.equal(wc, wa) and torch.equal(oc, oa)


@needs_native
def test_deferred_update_with_the_one_pass_kernel_is_bitwise_the_immediate_one():
    """A model whose linears take the blockwise path with a fold (one block and several blocks)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Tanh(), torch.nn.Linear(48, 5000, bias=False))
    x = torch.randn(3, 64)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    runs = []
    for defer in (False, True):
        net.load_state_dict(state)
        opt = ZOSGD(net.parameters(), lr=1e-2, seed=4, defer_update=defer)
        for _ in range(5):
            opt.step(lambda: net(x).square().mean())
        opt.flush()
        runs.append({k: v.clone() for k, v in net.state_dict().items()})
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    assert not torch.equal(runs[0]["2.weight"], state["2.weight"])
