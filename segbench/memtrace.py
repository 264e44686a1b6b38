"""A memory timeline of one prefill, the writer's side: a sampler thread, decimation, the trace file.

Light on purpose (no pandas, no analysis): the worker imports it in every cell process. The
dashboard reads the same files through its own reader.

The memory pass samples every few milliseconds while prefill runs; the cell stores the trace
beside its row as `<suite_dir>/traces/<config_hash>.json`, one JSON object (the dashboard's
Timeline page reads exactly this):

    {"config_hash": str,
     "source": "cpu_rss" | "cuda_allocated",
     "t_s": [float, ...],              # seconds from prefill start, strictly increasing
     "bytes": [int, ...],              # same basis as the row's peak_prefill_mem_bytes, weights
                                       # included: weights + (RSS - RSS before prefill) on CPU,
                                       # torch.cuda.memory_allocated on GPU
     "nvml_used_bytes": [int, ...] | null,  # NVML device used minus the idle baseline taken
                                       # before the model loaded (the row's nvml_peak_used_bytes basis)
     "ttft_s": float,                  # the memory pass's own prefill time (the x axis' extent)
     "weights_bytes": int}

A sampled trace can only miss a peak (the row's figure is the kernel's or the allocator's exact
high-water mark); decimation keeps each bucket's minimum and maximum, so the trace's own maximum
survives it exactly. On GPU the samples are host-side allocator state: the host runs ahead of the
device, so an allocation shows when it is enqueued, not when its kernel runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_POINTS = 2000  # per trace: a plot's width, ~50 KB of JSON
PERIOD_S = 0.002  # a few ms: finer than a decoder layer of any prefill worth plotting
_PAGE = os.sysconf("SC_PAGE_SIZE")


def statm_rss_bytes() -> int:
    """Resident set size from /proc/self/statm: one short read, cheap enough for a 2 ms sampler."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


@dataclass
class Samples:
    t_s: list[float] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    nvml: list[int] | None = None


class Sampler:
    """Calls `probe` (and `nvml_probe`, if given) every `period_s` in a thread between enter and exit.

    One sample is taken on entry and one on exit, so even a phase shorter than the period has
    its start and end. Times are seconds since entry. `housekeeping` runs before each sample (the
    memory pass trims the heap there, see measure.trim_heap).
    """

    def __init__(self, probe: Callable[[], int], nvml_probe: Callable[[], int] | None = None,
                 period_s: float = PERIOD_S, housekeeping: Callable[[], None] | None = None) -> None:
        self.probe = probe
        self.housekeeping = housekeeping
        self.nvml_probe = nvml_probe
        self.period = period_s
        self.record = Samples(nvml=[] if nvml_probe is not None else None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        if self.housekeeping is not None:
            self.housekeeping()
        t = time.perf_counter() - self._t0
        value = int(self.probe())
        nv = None
        if self.nvml_probe is not None:
            try:
                nv = int(self.nvml_probe())
            except Exception:  # noqa: BLE001 - a driver hiccup: no NVML series rather than a gappy one
                self.nvml_probe, self.record.nvml = None, None
        self.record.t_s.append(t)
        self.record.values.append(value)
        if nv is not None:
            self.record.nvml.append(nv)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> Samples:
        self._t0 = time.perf_counter()
        self._sample()
        self._thread.start()
        return self.record

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def decimate(values: list[int], cap: int = MAX_POINTS) -> list[int]:
    """Indices to keep, ascending, at most `cap`: first, last, and each bucket's min and max."""
    n = len(values)
    if n <= cap:
        return list(range(n))
    buckets = max(1, (cap - 2) // 2)
    keep = {0, n - 1}
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if lo >= hi:
            continue
        chunk = range(lo, hi)
        keep.add(min(chunk, key=values.__getitem__))
        keep.add(max(chunk, key=values.__getitem__))
    return sorted(keep)


def build_trace(config_hash: str, device: str, samples: Samples, *, weights_bytes: int, ttft_s: float,
                rss_before_bytes: int = 0, cap: int = MAX_POINTS) -> dict:
    """The trace file's object (see the module docstring) from raw samples."""
    if device == "cuda":
        source, values = "cuda_allocated", list(samples.values)
    else:
        source = "cpu_rss"
        values = [weights_bytes + max(0, v - rss_before_bytes) for v in samples.values]
    # Times are stored to the microsecond; a sample within the same microsecond as the next adds
    # nothing and would break "strictly increasing", so the later one stands for both.
    rounded = [round(t, 6) for t in samples.t_s]
    order = [i for i in range(len(values)) if i + 1 == len(values) or rounded[i + 1] > rounded[i]]
    values = [values[i] for i in order]
    t_s = [rounded[i] for i in order]
    nvml = [samples.nvml[i] for i in order] if samples.nvml is not None else None
    keep = decimate(values, cap)
    return {
        "config_hash": config_hash,
        "source": source,
        "t_s": [t_s[i] for i in keep],
        "bytes": [int(values[i]) for i in keep],
        "nvml_used_bytes": [int(nvml[i]) for i in keep] if nvml is not None else None,
        "ttft_s": float(ttft_s),
        "weights_bytes": int(weights_bytes),
    }
