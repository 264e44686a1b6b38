"""Trackers: context managers that measure one phase and return a plain record.

GPU memory comes from two independent sources, the torch caching allocator and NVML (what
nvidia-smi sees, including the CUDA context and anything outside the allocator); CPU memory is the
process's peak RSS over the phase. Times are synchronised wall clock (CPU) or CUDA events (GPU).
"""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from dataclasses import dataclass, field

import torch

# --------------------------------------------------------------------------------------------
# CPU memory


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False where /proc refuses it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class CpuPeak:
    rss_before_bytes: int = 0
    peak_bytes: int = 0
    source: str = "cpu_rss_hwm"

    @property
    def delta_bytes(self) -> int:
        return max(0, self.peak_bytes - self.rss_before_bytes)


class CpuPeakRss:
    """Peak RSS over a phase: the kernel's own high-water mark, reset at the start of the phase.

    Where clear_refs is refused, a 1 ms sampler stands in (and says so in `source`): it can miss
    a spike shorter than its period, the kernel's mark cannot.
    """

    def __init__(self, sample_period_s: float = 0.001) -> None:
        self.record = CpuPeak()
        self._period = sample_period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CpuPeak:
        if _reset_hwm():
            self.record.source = "cpu_rss_hwm"
        else:
            self.record.source = "cpu_rss_sampled"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self.record.rss_before_bytes = rss_bytes()
        self.record.peak_bytes = self.record.rss_before_bytes
        return self.record

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.record.peak_bytes = max(self.record.peak_bytes, rss_bytes())
            time.sleep(self._period)

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.record.peak_bytes = max(self.record.peak_bytes, rss_bytes())
        else:
            self.record.peak_bytes = max(self.record.peak_bytes, _status_kib("VmHWM") * 1024)


# --------------------------------------------------------------------------------------------
# The host allocator of a pass
#
# A peak-RSS figure is only honest if freed buffers leave RSS: glibc's dynamic mmap threshold
# (it rises to the size of any freed mmapped block, up to 32 MiB) keeps freed buffers in the heap,
# where the next phase reuses them without RSS growing. Pinning the threshold low fixes the
# measurement but makes every large allocation map fresh pages: on the tiny Llama at 16K it made
# CPU decode 2-3.5x slower. So a cell times with the allocator as users run it and measures memory
# in a pass of its own, pinned. glibc cannot undo a pin (setting M_MMAP_THRESHOLD or
# M_TRIM_THRESHOLD disables the dynamic threshold for good, see mallopt(3); there is no call that
# re-enables it), and a forked child cannot measure (a CUDA context does not survive fork, a used
# OpenMP pool can hang in it). Hence the order: every timing pass first, the memory pass last in
# the process; `pin_malloc_thresholds` is called only by the memory pass.

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
PINNED_MMAP_THRESHOLD = 256 * 1024
PINNED_TRIM_THRESHOLD = 1024 * 1024
_MALLOC_REPLACEMENTS = ("jemalloc", "tcmalloc", "mimalloc")


_LIBC: list = []  # [library or None], filled on first use


def _glibc():
    """libc as a ctypes library where it is glibc and the process's malloc; None otherwise."""
    if not _LIBC:
        preload = os.environ.get("LD_PRELOAD", "")
        libc = None
        if not any(name in preload for name in _MALLOC_REPLACEMENTS):  # else mallopt tunes an unused allocator
            try:
                if os.confstr("CS_GNU_LIBC_VERSION"):
                    libc = ctypes.CDLL("libc.so.6")
            except (OSError, ValueError):
                libc = None
        _LIBC.append(libc)
    return _LIBC[0]


def _initial_allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in _MALLOC_REPLACEMENTS):
        return f"LD_PRELOAD={preload} (its own defaults)"
    if _glibc() is None:
        return "not glibc (its own defaults)"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "malloc" in tunables:
        return f"glibc with GLIBC_TUNABLES={tunables}"
    return "glibc defaults (dynamic mmap threshold)"


_allocator = _initial_allocator()


def allocator_settings() -> str:
    """The host allocator's settings this process runs with now (recorded per pass in the row)."""
    return _allocator


def pin_malloc_thresholds() -> str:
    """Pin glibc's mmap and trim thresholds, then trim, so freed buffers leave RSS. Irreversible.

    Trimming matters as much as pinning: buffers an earlier (timing) pass freed into the heap are
    still resident and a pinned process would reuse them without RSS growing (measured: 200 MiB of
    4 MiB tensors freed under the dynamic threshold left 25 MiB resident until malloc_trim).
    Returns the settings now in force.
    """
    global _allocator
    libc = _glibc()
    if libc is None:
        return _allocator  # nothing to pin; the row says which allocator it was
    ok = libc.mallopt(M_MMAP_THRESHOLD, PINNED_MMAP_THRESHOLD) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, PINNED_TRIM_THRESHOLD) == 1 and ok
    libc.malloc_trim(0)
    if ok:
        _allocator = (f"glibc pinned: mmap_threshold={PINNED_MMAP_THRESHOLD} "
                      f"trim_threshold={PINNED_TRIM_THRESHOLD}, heap trimmed")
    else:
        _allocator = f"glibc, mallopt refused the pin ({_allocator})"
    return _allocator


def trim_heap() -> None:
    """Give free heap pages back to the kernel (malloc_trim), where the allocator is glibc.

    The memory pass calls this before every timeline sample. Pinning alone is not enough after
    timing passes: they leave a large, mostly free heap (tiny Llama at 4K: 200 MiB arena, 50 MiB
    free), and the pass's small allocations march through it, each touching fresh pages that stay
    resident once freed. Measured at 4K, full one-shot (RSS over the RSS before prefill, 3 runs
    each): 60.6-93.2 MiB without the periodic trim, 57.3-57.6 MiB with it, against 57.7-57.9 MiB
    in a process pinned from its start and warmed up once (the old scheme's figure). With it, RSS follows what is live, as
    max_memory_allocated does on a GPU.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# --------------------------------------------------------------------------------------------
# GPU memory


@dataclass
class CudaPeak:
    max_allocated_bytes: int = 0
    max_reserved_bytes: int = 0


class CudaAllocatorPeak:
    """torch.cuda.max_memory_allocated / reserved over a phase (cache emptied first, so reserved is honest)."""

    def __init__(self, device: int = 0) -> None:
        self.device = device
        self.record = CudaPeak()

    def __enter__(self) -> CudaPeak:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        return self.record

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.record.max_allocated_bytes = torch.cuda.max_memory_allocated(self.device)
        self.record.max_reserved_bytes = torch.cuda.max_memory_reserved(self.device)


@dataclass
class NvmlPeak:
    baseline_used_bytes: int = 0
    peak_used_bytes: int = 0
    peak_process_bytes: int | None = None
    samples: int = 0

    @property
    def peak_over_baseline_bytes(self) -> int:
        return max(0, self.peak_used_bytes - self.baseline_used_bytes)


class NvmlSampler:
    """Polls NVML in a thread: device used memory and this process's own usage, peak of each.

    `nvml` is the pynvml module (injectable, so tests can pass a fake); `baseline_used_bytes` is
    the device's used memory before the model was loaded.
    """

    def __init__(self, nvml, handle, baseline_used_bytes: int, period_s: float = 0.002, pid: int | None = None) -> None:
        self.nvml = nvml
        self.handle = handle
        self.period = period_s
        self.pid = os.getpid() if pid is None else pid
        self.record = NvmlPeak(baseline_used_bytes=baseline_used_bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used
        self.record.peak_used_bytes = max(self.record.peak_used_bytes, used)
        try:
            for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                mem = getattr(proc, "usedGpuMemory", None)
                if proc.pid == self.pid and mem is not None:
                    self.record.peak_process_bytes = max(self.record.peak_process_bytes or 0, mem)
        except self.nvml.NVMLError:
            pass  # containers often hide processes; the device-level figure still stands
        self.record.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.period)

    def __enter__(self) -> NvmlPeak:
        self._poll()
        self._thread.start()
        return self.record

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()


def nvml_open(device_index: int = 0):
    """(pynvml module, handle) or (None, None) where NVML is not there."""
    try:
        import pynvml

        pynvml.nvmlInit()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        physical = int(visible.split(",")[device_index]) if visible and visible.split(",")[0].isdigit() else device_index
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(physical)
    except Exception:
        return None, None


def nvml_gpu_count() -> int:
    """How many NVIDIA GPUs the driver sees, without initialising CUDA in this process."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


# --------------------------------------------------------------------------------------------
# Time


class Stopwatch:
    """Wall time of a phase that ends with the device done (synchronised on CUDA)."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        if self.cuda:
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._t0


@dataclass
class StepTimes:
    """Per-step latencies: CUDA events on the GPU (no host sync per step), perf_counter on the CPU."""

    device: str
    ms: list[float] = field(default_factory=list)
    _events: list = field(default_factory=list)

    def start(self):
        if self.device == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, token) -> None:
        if self.device == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((token, end))
        else:
            self.ms.append((time.perf_counter() - token) * 1000.0)

    def finish(self) -> list[float]:
        if self._events:
            torch.cuda.synchronize()
            self.ms.extend(s.elapsed_time(e) for s, e in self._events)
            self._events.clear()
        return self.ms


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
