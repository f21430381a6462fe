"""The optional native kernel of the Rademacher perturbation (``_signs.c``), built at first use.

``w + c z`` with ``z = +-1`` from a chunk's random bits is, in torch, three memory-bound
ops (sign-table lookup, widening copy, add) with two temporaries. ``_signs.c`` does it in
one pass over the weights, reading the random bits directly, with the same values bit for bit
(``tests/optim/test_native.py`` holds it equal to the torch path). It is plain C called through
:mod:`ctypes`: no Python or torch headers, so building it takes about a second.

The shared library is compiled with the machine's C compiler (``$CC`` or ``cc``,
``-O3 -march=native``) into ``$FORWARDONLY_CACHE/kernels/`` (default
``~/.cache/forwardonly/kernels``), keyed by a hash of the source, the compiler, the CPU and
the OpenMP runtime, and written atomically. Without a compiler, or with ``FORWARDONLY_NATIVE=0``,
or on a device other than the CPU, forwardonly uses the torch path: same values, slower.

Threads: a large call is split into pieces run by torch's own intra-op threads. The library is
built with ``-fopenmp`` and linked against the OpenMP runtime that torch loaded (found in the
process's memory map), so its ``#pragma omp parallel`` regions reuse torch's team: the threads that
ran the previous matmul, still spinning, take the pieces at once, and no second pool competes with
them for the cores. Where that cannot be arranged (no OpenMP in torch or the compiler, another
runtime got loaded), the pieces go to a small Python thread pool instead (``ctypes`` releases the
GIL). The kernel is elementwise, so the values never depend on the split.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("_signs.c")
ABI_VERSION = 4

_LOCK = threading.Lock()
_STATE: dict = {}


def _cache_dir() -> Path:
    from ...io import cache_root

    return cache_root() / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("clang")


_OMP_NAMES = ("libgomp", "libiomp", "libomp")


def _openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    found = []
    for line in maps.splitlines():
        fields = line.split(None, 5)
        path = fields[5].strip() if len(fields) == 6 else ""
        name = os.path.basename(path)
        if name.startswith(_OMP_NAMES) and ".so" in name:
            real = os.path.realpath(path)
            if real not in found:
                found.append(real)
    return found


def _torch_openmp() -> str | None:
    """The OpenMP runtime torch runs its intra-op threads on (its own copy where it ships one, else the
    only one loaded), or None: torch built without OpenMP, or no way to tell which runtime it uses."""
    if not torch.backends.openmp.is_available():
        return None
    runtimes = _openmp_runtimes()
    mine = [r for r in runtimes if r.startswith(os.path.realpath(os.path.dirname(torch.__file__)) + os.sep)]
    if len(mine) == 1:
        return mine[0]
    return runtimes[0] if len(runtimes) == 1 else None


def _build(cc: str, out: Path, runtime: str | None) -> str | None:
    """Compile into ``out`` atomically, with OpenMP linked against ``runtime`` where that works;
    returns an error message or None."""
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in (["-O3", "-march=native"], ["-O3"]):
        for omp in ([True, False] if runtime else [False]):
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent, prefix=".build-")
            os.close(fd)
            obj = tmp[:-3] + ".o"
            # with OpenMP: compile with -fopenmp, then link against torch's runtime itself (not the
            # compiler's -lgomp), so that the library needs the runtime torch already loaded
            steps = ([[cc, *flags, "-fopenmp", "-fPIC", "-c", "-o", obj, str(SOURCE)],
                      [cc, "-shared", "-o", tmp, obj, runtime, f"-Wl,-rpath,{os.path.dirname(runtime)}"]]
                     if omp else [[cc, *flags, "-shared", "-fPIC", "-o", tmp, str(SOURCE)]])
            try:
                for cmd in steps:
                    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
                    if r.returncode != 0:
                        errors.append(f"{' '.join(cmd[:-1])}: {r.stderr.strip()[:500]}")
                        break
                else:
                    os.replace(tmp, out)
                    return None
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(f"{cc} {' '.join(flags)}: {e}")
            finally:
                for f in (tmp, obj):
                    if os.path.exists(f):
                        os.unlink(f)
    return "; ".join(errors)


_PTR, _I64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_SIGNATURES = {
    "fo_sign_add_f32": [_PTR, _PTR, _I64, _PTR, _I64, _I64, _F32],
    "fo_sign_add2_f32": [_PTR, _PTR, _I64, _PTR, _PTR, _I64, _I64, _F32, _F32],
    "fo_sign_add_f32_mt": [_PTR, _PTR, _I64, _PTR, _I64, _I64, _F32, _INT, _I64],
    "fo_sign_add2_f32_mt": [_PTR, _PTR, _I64, _PTR, _PTR, _I64, _I64, _F32, _F32, _INT, _I64],
    "fo_random_words": [_PTR, _I64, ctypes.c_uint64],
}


def _load(cc: str):
    """Build (if not cached) and load the library: ``(lib, why not)``; fills ``_STATE``."""
    try:
        version = subprocess.run([cc, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    runtime = _torch_openmp()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, _cpu_flags(), str(runtime),
                                    str(ABI_VERSION)]).encode()).hexdigest()[:16]
    path = _cache_dir() / f"signs-{key}.so"
    before = _openmp_runtimes()
    try:
        if not path.is_file() and (why := _build(cc, path, runtime)) is not None:
            return None, why
        lib = ctypes.CDLL(str(path))
        if lib.fo_abi_version() != ABI_VERSION:
            return None, f"{path}: ABI version {lib.fo_abi_version()}, expected {ABI_VERSION}"
    except OSError as e:
        return None, f"{path}: {e}"
    for name, argtypes in _SIGNATURES.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = None, argtypes
    # split calls run in torch's own OpenMP team only if loading the library did not bring in a
    # second runtime (which would have a team of its own); else the Python pool splits them
    _STATE["openmp"] = bool(lib.fo_openmp()) and runtime is not None and _openmp_runtimes() == before
    _STATE["words"] = _same_words(lib)
    _STATE["path"], _STATE["simd"] = str(path), lib.fo_simd_width()
    return lib, None


def _same_words(lib) -> bool:
    """Whether the kernel's random words are torch's generator's, on a few seeds and lengths (a torch
    release that changed its generator would turn the kernel's words off, not the directions)."""
    for seed, n in ((0, 1), (5489, 311), (2**40 + 7, 313), ((1 << 63) - 25, 1000)):
        gen = torch.Generator().manual_seed(seed)
        ref = torch.empty(n, dtype=torch.int64).random_(-(2**63), None, generator=gen)
        out = torch.empty(n, dtype=torch.int64)
        lib.fo_random_words(out.data_ptr(), n, seed)
        if not torch.equal(out, ref):
            return False
    return True


def library():
    """The loaded kernel library, or None when it is disabled or cannot be built (see :func:`status`)."""
    if "lib" in _STATE:
        return _STATE["lib"]
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]
        lib, why = None, None
        if os.environ.get("FORWARDONLY_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            why = "disabled by FORWARDONLY_NATIVE"
        elif (cc := _compiler()) is None:
            why = "no C compiler found ($CC, cc, gcc, clang)"
        else:
            lib, why = _load(cc)
        _STATE["lib"], _STATE["why"] = lib, why
        return lib


def status() -> dict:
    """``{"available": bool, "path": ..., "simd": lanes, "openmp": split calls run in torch's OpenMP
    team, "words": random words drawn by the kernel, "reason": why not}`` (builds on first call)."""
    lib = library()
    return {"available": lib is not None, "path": _STATE.get("path"), "simd": _STATE.get("simd"),
            "openmp": bool(_STATE.get("openmp")), "words": bool(_STATE.get("words")), "reason": _STATE.get("why")}


def reset() -> None:
    """Forget the loaded state (tests: rebuild under another environment)."""
    with _LOCK:
        _STATE.clear()


PIECE = 1 << 15
"""Fewest elements per thread when a call is split over torch's OpenMP team (128 KB of weights: the
team's threads are spinning right after the previous op, so a split costs a few microseconds)."""
POOL_PIECE = 1 << 18
"""The same for the Python thread pool (waking a pool thread and joining it costs tens of microseconds)."""
_POOL: dict = {}


def _pool(workers: int):
    from concurrent.futures import ThreadPoolExecutor

    pool = _POOL.get(workers)
    if pool is None:
        for old in _POOL.values():
            old.shutdown(wait=False)
        _POOL.clear()
        pool = _POOL[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forwardonly-signs")
    return pool


def _pooled(fn, n: int, k: int, args_of) -> None:
    """Run ``fn`` over ``k`` pieces of whole 64-entry words of ``[0, n)`` (the first in this thread);
    ``args_of(a, b)`` gives a piece's arguments."""
    step = ((n + k - 1) // k + 63) // 64 * 64
    cuts = list(range(0, n, step)) + [n]
    jobs = [_pool(k - 1).submit(fn, *args_of(a, b)) for a, b in itertools.pairwise(cuts[1:])]
    fn(*args_of(0, cuts[1]))
    for j in jobs:
        j.result()


def sign_add_f32(dst, src, words, first: int, coef: float, threads: int | None = None) -> bool:
    """``dst = src + coef * sign(bit first + i of words)`` with the kernel; False if it is unavailable.

    ``dst``/``src``: contiguous fp32 CPU tensors of equal length (may be the same tensor);
    ``words``: the chunk's random int64 words (CPU, contiguous). Large calls are split over
    ``threads`` (default ``torch.get_num_threads()``) pieces, in torch's OpenMP team where the library
    shares torch's runtime, else in a Python pool; the kernel is elementwise, so the values do not
    depend on the split.
    """
    lib = _STATE["lib"] if "lib" in _STATE else library()
    if lib is None:
        return False
    n, d, s, w = dst.numel(), dst.data_ptr(), src.data_ptr(), words.data_ptr()
    nbytes, first, coef, k = words.numel() * 8, int(first), float(coef), threads or torch.get_num_threads()
    if _STATE["openmp"]:
        lib.fo_sign_add_f32_mt(d, s, n, w, nbytes, first, coef, k, PIECE)
        return True
    k = min(k, n // POOL_PIECE)
    if k <= 1:
        lib.fo_sign_add_f32(d, s, n, w, nbytes, first, coef)
    else:
        _pooled(lib.fo_sign_add_f32, n, k,
                lambda a, b: (d + 4 * a, s + 4 * a, b - a, w, nbytes, first + a, coef))
    return True


def sign_add2_f32(w, out, words_a, words_b, first: int, coef_a: float, coef_b: float,
                  threads: int | None = None) -> bool:
    """In one pass: ``w += coef_a * sign_a``, then ``out = w + coef_b * sign_b`` (the signs: bits
    ``first + i`` of two chunks' random words of equal length); False if the kernel is unavailable.
    Bitwise the values of two :func:`sign_add_f32` calls; split over threads as they are."""
    lib = _STATE["lib"] if "lib" in _STATE else library()
    if lib is None:
        return False
    n, pw, po, wa, wb = w.numel(), w.data_ptr(), out.data_ptr(), words_a.data_ptr(), words_b.data_ptr()
    nbytes = min(words_a.numel(), words_b.numel()) * 8
    first, coef_a, coef_b, k = int(first), float(coef_a), float(coef_b), threads or torch.get_num_threads()
    if _STATE["openmp"]:
        lib.fo_sign_add2_f32_mt(pw, po, n, wa, wb, nbytes, first, coef_a, coef_b, k, PIECE)
        return True
    k = min(k, n // POOL_PIECE)
    if k <= 1:
        lib.fo_sign_add2_f32(pw, po, n, wa, wb, nbytes, first, coef_a, coef_b)
    else:
        _pooled(lib.fo_sign_add2_f32, n, k,
                lambda a, b: (pw + 4 * a, po + 4 * a, b - a, wa, wb, nbytes, first + a, coef_a, coef_b))
    return True


def random_words(out, seed: int) -> bool:
    """Fill the contiguous int64 CPU tensor ``out`` with the random words of torch's CPU generator
    seeded with ``seed`` (bit for bit, checked at load); False if the kernel does not draw them."""
    lib = _STATE["lib"] if "lib" in _STATE else library()
    if lib is None or not _STATE["words"]:
        return False
    lib.fo_random_words(out.data_ptr(), out.numel(), seed)
    return True
