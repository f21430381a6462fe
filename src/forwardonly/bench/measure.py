"""Timers and memory meters.

On Linux, process memory comes from ``/proc/self/status``: ``VmHWM`` is the peak
resident set, ``RssAnon`` the anonymous (heap) part. The peak can be reset by
writing ``5`` to ``/proc/self/clear_refs``, so one process can measure several
phases in turn. :class:`PeakMemory` also samples ``RssAnon`` in a background
thread to report the peak of anonymous memory, which excludes file-backed pages
such as memory-mapped weights. On CUDA, ``torch.cuda.max_memory_allocated`` is
reported as well.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from contextlib import contextmanager

_STATUS = "/proc/self/status"


def _status_kb(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def anon_bytes() -> int | None:
    kb = _status_kb("RssAnon")
    return None if kb is None else kb * 1024


def peak_rss_bytes() -> int | None:
    kb = _status_kb("VmHWM")
    return None if kb is None else kb * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter for this process. Returns False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Measure peak memory over a block of code.

    Reports ``peak_rss`` (kernel high-water mark, after a reset), ``peak_anon``
    (sampled every ``interval`` seconds), and ``cuda_peak`` when a CUDA device is
    used. Example::

        with PeakMemory() as mem:
            model(x)
        print(mem.result())
    """

    def __init__(self, interval: float = 0.002, device=None):
        self.interval = interval
        self.device = device
        self._stop = threading.Event()
        self.peak_anon = 0
        self.peak_rss = None
        self.cuda_peak = None
        self.start_rss = None
        self.start_anon = None

    def _sample(self):
        while not self._stop.is_set():
            a = anon_bytes() or 0
            self.peak_anon = max(self.peak_anon, a)
            self._stop.wait(self.interval)

    def __enter__(self):
        import gc

        gc.collect()
        self._cuda = False
        try:
            import torch

            if torch.cuda.is_available() and (self.device is None or str(self.device).startswith("cuda")):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self._cuda = True
        except Exception:
            pass
        reset_peak_rss()
        self.start_rss = rss_bytes()
        self.start_anon = anon_bytes()
        self.peak_anon = self.start_anon or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        a = anon_bytes() or 0
        self.peak_anon = max(self.peak_anon, a)
        self.peak_rss = peak_rss_bytes()
        if self._cuda:
            import torch

            torch.cuda.synchronize()
            self.cuda_peak = torch.cuda.max_memory_allocated()
        return False

    def result(self) -> dict:
        return {
            "start_rss": self.start_rss,
            "start_anon": self.start_anon,
            "peak_rss": self.peak_rss,
            "peak_anon": self.peak_anon,
            "cuda_peak": self.cuda_peak,
        }


def sync(device=None) -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except Exception:
        pass


def time_call(fn, repeats: int = 5, warmup: int = 1) -> dict:
    """Time ``fn()``: discard ``warmup`` calls, report median/min/max over ``repeats``."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "all": times}


@contextmanager
def timer():
    """``with timer() as t: ...`` then ``t()`` gives elapsed seconds."""
    t0 = time.perf_counter()
    end = [None]
    yield lambda: (end[0] or time.perf_counter()) - t0
    end[0] = time.perf_counter()


def machine_info() -> dict:
    import platform

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except OSError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name()
    except Exception:
        pass
    return info
