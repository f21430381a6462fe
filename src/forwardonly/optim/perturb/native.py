"""The optional native kernel of the Rademacher perturbation (``_signs.c``), built at first use.

``w + c z`` with ``z = +-1`` from a chunk's random bits is, in torch, three memory-bound
ops (sign-table lookup, widening copy, add) with two temporaries. ``_signs.c`` does it in
one pass over the weights, reading the random bits directly, with the same values bit for bit
(``tests/optim/test_native.py`` holds it equal to the torch path). It is plain C called through
:mod:`ctypes`: no Python or torch headers, so building it takes about a second.

The shared library is compiled with the machine's C compiler (``$CC`` or ``cc``,
``-O3 -march=native``) into ``$FORWARDONLY_CACHE/kernels/`` (default
``~/.cache/forwardonly/kernels``), keyed by a hash of the source, the compiler and the
CPU, and written atomically. Without a compiler, or with ``FORWARDONLY_NATIVE=0``, or on a
device other than the CPU, forwardonly uses the torch path: same values, slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("_signs.c")
ABI_VERSION = 2

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


def _build(cc: str, out: Path) -> str | None:
    """Compile into ``out`` atomically; returns an error message or None."""
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in (["-O3", "-march=native"], ["-O3"]):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent, prefix=".build-")
        os.close(fd)
        try:
            r = subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", tmp, str(SOURCE)],
                               capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                os.replace(tmp, out)
                return None
            errors.append(f"{cc} {' '.join(flags)}: {r.stderr.strip()[:500]}")
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(f"{cc} {' '.join(flags)}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return "; ".join(errors)


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
            try:
                version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError):
                version = ""
            key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, _cpu_flags(),
                                            str(ABI_VERSION)]).encode()).hexdigest()[:16]
            path = _cache_dir() / f"signs-{key}.so"
            try:
                if not path.is_file():
                    why = _build(cc, path)
                if why is None:
                    lib = ctypes.CDLL(str(path))
                    if lib.fo_abi_version() != ABI_VERSION:
                        lib, why = None, f"{path}: ABI version {lib.fo_abi_version()}, expected {ABI_VERSION}"
            except OSError as e:
                lib, why = None, f"{path}: {e}"
            if lib is not None:
                f = lib.fo_sign_add_f32
                f.restype = None
                f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                              ctypes.c_int64, ctypes.c_float]
                g = lib.fo_sign_add2_f32
                g.restype = None
                g.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_float]
                _STATE["path"] = str(path)
                _STATE["simd"] = lib.fo_simd_width()
        _STATE["lib"], _STATE["why"] = lib, why
        return lib


def status() -> dict:
    """``{"available": bool, "path": ..., "simd": lanes, "reason": why not}`` (builds on first call)."""
    lib = library()
    return {"available": lib is not None, "path": _STATE.get("path"), "simd": _STATE.get("simd"),
            "reason": _STATE.get("why")}


def reset() -> None:
    """Forget the loaded state (tests: rebuild under another environment)."""
    with _LOCK:
        _STATE.clear()


PIECE = 1 << 18
"""Fewest elements per thread when a call is split over torch's intra-op threads."""
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


def sign_add_f32(dst, src, words, first: int, coef: float, threads: int | None = None) -> bool:
    """``dst = src + coef * sign(bit first + i of words)`` with the kernel; False if it is unavailable.

    ``dst``/``src``: contiguous fp32 CPU tensors of equal length (may be the same tensor);
    ``words``: the chunk's random int64 words (CPU, contiguous). Large calls are split over
    ``threads`` (default ``torch.get_num_threads()``) pieces, run at once (``ctypes`` releases the GIL);
    the kernel is elementwise, so the values do not depend on the split.
    """
    lib = library()
    if lib is None:
        return False
    import torch

    n = dst.numel()
    d, s, w = dst.data_ptr(), src.data_ptr(), words.data_ptr()
    nbytes, first, coef = words.numel() * 8, int(first), float(coef)
    k = min(threads or torch.get_num_threads(), n // PIECE)
    if k <= 1:
        lib.fo_sign_add_f32(d, s, n, w, nbytes, first, coef)
        return True
    step = ((n + k - 1) // k + 63) // 64 * 64  # pieces of whole 64-entry words
    cuts = list(range(0, n, step)) + [n]
    jobs = [_pool(k - 1).submit(lib.fo_sign_add_f32, d + 4 * a, s + 4 * a, b - a, w, nbytes, first + a, coef)
            for a, b in zip(cuts[1:-1], cuts[2:])]
    lib.fo_sign_add_f32(d, s, cuts[1], w, nbytes, first, coef)
    for j in jobs:
        j.result()
    return True


def sign_add2_f32(w, out, words_a, words_b, first: int, coef_a: float, coef_b: float,
                  threads: int | None = None) -> bool:
    """In one pass: ``w += coef_a * sign_a``, then ``out = w + coef_b * sign_b`` (the signs: bits
    ``first + i`` of two chunks' random words of equal length); False if the kernel is unavailable.
    Bitwise the values of two :func:`sign_add_f32` calls."""
    lib = library()
    if lib is None:
        return False
    import torch

    n = w.numel()
    pw, po, wa, wb = w.data_ptr(), out.data_ptr(), words_a.data_ptr(), words_b.data_ptr()
    nbytes, first, coef_a, coef_b = min(words_a.numel(), words_b.numel()) * 8, int(first), float(coef_a), float(coef_b)
    k = min(threads or torch.get_num_threads(), n // PIECE)
    if k <= 1:
        lib.fo_sign_add2_f32(pw, po, n, wa, wb, nbytes, first, coef_a, coef_b)
        return True
    step = ((n + k - 1) // k + 63) // 64 * 64
    cuts = list(range(0, n, step)) + [n]
    jobs = [_pool(k - 1).submit(lib.fo_sign_add2_f32, pw + 4 * a, po + 4 * a, b - a, wa, wb, nbytes, first + a,
                                coef_a, coef_b) for a, b in zip(cuts[1:-1], cuts[2:])]
    lib.fo_sign_add2_f32(pw, po, cuts[1], wa, wb, nbytes, first, coef_a, coef_b)
    for j in jobs:
        j.result()
    return True
