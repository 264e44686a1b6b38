"""Trackers measure what they claim: a fake NVML drives the sampler, real allocations drive RSS."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from segbench import measure, memtrace


class FakeNvml:
    """Stands in for pynvml: used memory follows a script the test controls."""

    class NVMLError(Exception):
        pass

    def __init__(self, pid: int, hide_processes: bool = False) -> None:
        self.used = 1000
        self.process_mem = 100
        self.pid = pid
        self.hide = hide_processes
        self.calls = 0

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.calls += 1
        return SimpleNamespace(used=self.used, total=10**6, free=10**6 - self.used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        if self.hide:
            raise self.NVMLError("not permitted in this container")
        return [SimpleNamespace(pid=self.pid, usedGpuMemory=self.process_mem), SimpleNamespace(pid=1, usedGpuMemory=10**9)]


def test_nvml_sampler_catches_a_transient_peak():
    fake = FakeNvml(pid=4242)
    sampler = measure.NvmlSampler(fake, handle=None, baseline_used_bytes=800, period_s=0.001, pid=4242)
    with sampler as rec:
        time.sleep(0.02)
        fake.used, fake.process_mem = 5000, 4100  # the spike
        time.sleep(0.02)
        fake.used, fake.process_mem = 1200, 300  # gone again before exit
        time.sleep(0.02)
    assert rec.peak_used_bytes == 5000
    assert rec.peak_over_baseline_bytes == 4200
    assert rec.peak_process_bytes == 4100  # only our pid counts, not pid 1's 1 GB
    assert rec.samples >= 10


def test_nvml_sampler_without_process_visibility_keeps_device_figure():
    fake = FakeNvml(pid=1, hide_processes=True)
    with measure.NvmlSampler(fake, handle=None, baseline_used_bytes=0, period_s=0.001) as rec:
        fake.used = 3000
        time.sleep(0.01)
    assert rec.peak_used_bytes == 3000 and rec.peak_process_bytes is None


def test_cpu_peak_rss_sees_a_freed_allocation():
    import torch

    size = 200 * 1024 * 1024
    with measure.CpuPeakRss() as rec:
        t = torch.ones(size // 4, dtype=torch.float32)  # touched, so resident
        del t
    assert rec.source in ("cpu_rss_hwm", "cpu_rss_sampled")
    assert rec.delta_bytes >= 0.9 * size, rec
    with measure.CpuPeakRss() as quiet:  # the mark was reset: a quiet phase shows (almost) nothing
        pass
    assert quiet.delta_bytes < 0.1 * size


def test_cpu_peak_rss_sampler_fallback(monkeypatch):
    monkeypatch.setattr(measure, "_reset_hwm", lambda: False)
    size = 150 * 1024 * 1024
    with measure.CpuPeakRss() as rec:
        buf = bytearray(size)
        for i in range(0, size, 4096):
            buf[i] = 1
        time.sleep(0.05)
        del buf
    assert rec.source == "cpu_rss_sampled"
    assert rec.delta_bytes >= 0.9 * size


def test_percentiles_match_numpy():
    np = pytest.importorskip("numpy")
    xs = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]
    for q in (0, 50, 90, 99, 100):
        assert measure.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert measure.percentile([], 50) is None


def test_step_times_on_cpu():
    steps = measure.StepTimes("cpu")
    for _ in range(3):
        t = steps.start()
        time.sleep(0.002)
        steps.stop(t)
    ms = steps.finish()
    assert len(ms) == 3 and all(m >= 1.5 for m in ms)


def test_stopwatch_measures_the_block():
    with measure.Stopwatch("cpu") as sw:
        time.sleep(0.01)
    assert 0.009 <= sw.seconds < 1.0
    assert threading.active_count() >= 1


# --------------------------------------------------------------------------------------------
# The timeline sampler, its decimation and the trace contract


def test_sampler_has_start_end_and_a_transient_level():
    level = {"v": 100, "nv": 10}
    sampler = memtrace.Sampler(lambda: level["v"], lambda: level["nv"], period_s=0.001)
    with sampler as rec:
        time.sleep(0.02)
        level.update(v=900, nv=90)  # the transient
        time.sleep(0.02)
        level.update(v=200, nv=20)
        time.sleep(0.02)
    assert rec.values[0] == 100 and rec.values[-1] == 200 and max(rec.values) == 900
    assert rec.nvml is not None and max(rec.nvml) == 90 and len(rec.nvml) == len(rec.values) == len(rec.t_s)
    assert rec.t_s[0] < 0.001 and all(b >= a for a, b in zip(rec.t_s, rec.t_s[1:]))
    assert len(rec.values) >= 10


def test_sampler_drops_a_failing_nvml_series_rather_than_leave_gaps():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("NVML_ERROR_UNKNOWN")
        return 5

    with memtrace.Sampler(lambda: 1, flaky, period_s=0.001) as rec:
        time.sleep(0.02)
    assert rec.nvml is None and len(rec.values) >= 3


def test_decimation_keeps_the_extremes_under_the_cap():
    import random

    rng = random.Random(0)
    values = [rng.randrange(1000) for _ in range(20000)]
    values[12345] = 10**6  # a one-sample spike
    values[777] = -5
    keep = memtrace.decimate(values, cap=300)
    assert len(keep) <= 300 and keep == sorted(set(keep))
    assert keep[0] == 0 and keep[-1] == len(values) - 1
    assert 12345 in keep and 777 in keep
    assert memtrace.decimate(values[:50], cap=300) == list(range(50))


def test_trace_contract_basis_and_strictly_increasing_times():
    samples = memtrace.Samples(t_s=[0.0, 0.0010001, 0.0010002, 0.003, 0.004],
                               values=[5000, 5600, 5700, 9000, 5100])
    trace = memtrace.build_trace("abc", "cpu", samples, weights_bytes=100, ttft_s=0.004, rss_before_bytes=5000)
    assert set(trace) == {"config_hash", "source", "t_s", "bytes", "nvml_used_bytes", "ttft_s", "weights_bytes"}
    assert trace["source"] == "cpu_rss" and trace["nvml_used_bytes"] is None
    # weights + (rss - rss before prefill); the two samples in one microsecond became one (the later)
    assert trace["t_s"] == [0.0, 0.001, 0.003, 0.004]
    assert trace["bytes"] == [100, 800, 4100, 200]
    json.dumps(trace)
    many = memtrace.Samples(t_s=[i * 1e-3 for i in range(5000)], values=list(range(5000)), nvml=list(range(5000)))
    big = memtrace.build_trace("abc", "cuda", many, weights_bytes=0, ttft_s=5.0)
    assert len(big["t_s"]) <= memtrace.MAX_POINTS and big["source"] == "cuda_allocated"
    assert max(big["bytes"]) == 4999 and len(big["nvml_used_bytes"]) == len(big["t_s"])


# --------------------------------------------------------------------------------------------
# Pass separation, observed with fakes (a real cell's allocator is read back in test_passes.py)


class FakeLibc:
    def __init__(self, log: list) -> None:
        self.log = log

    def mallopt(self, param: int, value: int) -> int:
        self.log.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.log.append(("malloc_trim", pad))
        return 1


class StepAllocator:
    """A fake method: prefill holds `blocks` touched buffers, one more every 10 ms, then frees them."""

    def __init__(self, log: list, blocks: int = 6, block_bytes: int = 32 << 20) -> None:
        self.log, self.blocks, self.block_bytes = log, blocks, block_bytes

    def _gen(self, position: int):
        import torch

        from segbench.method import Generation

        return Generation(logits=torch.zeros(1, 8), state=None, next_position=position)

    def prefill(self, model, input_ids):
        import torch

        self.log.append(("prefill", threading.active_count()))
        held = []
        for _ in range(self.blocks):
            held.append(torch.ones(self.block_bytes // 4))
            time.sleep(0.01)
        time.sleep(0.04)  # the plateau: long enough for a sampler on a busy machine to see it
        del held
        return self._gen(input_ids.shape[1])

    def decode(self, model, token_ids, gen):
        self.log.append(("decode", threading.active_count()))
        return self._gen(gen.next_position + 1)

    def kv_cache_bytes(self, gen) -> int:
        return 0


@pytest.fixture
def fake_allocator(monkeypatch):
    """glibc replaced by a recorder, so no test pins the test process's own allocator."""
    log: list = []
    monkeypatch.setattr(measure, "_glibc", lambda: FakeLibc(log))
    monkeypatch.setattr(measure, "_allocator", "glibc defaults (dynamic mmap threshold)")
    return log


def test_timing_pass_starts_no_tracker_and_leaves_the_allocator_alone(fake_allocator):
    import torch

    from segbench import worker

    log = fake_allocator
    method = StepAllocator(log, blocks=1, block_bytes=1 << 20)
    ids = torch.zeros(1, 16, dtype=torch.long)
    threads = threading.active_count()
    out = worker.run_once(method, None, ids, 3, "cpu")
    assert log == [("prefill", threads)] + [("decode", threads)] * 3
    assert measure.allocator_settings() == "glibc defaults (dynamic mmap threshold)"
    assert set(out) == {"ttft_s", "decode_ms", "output_token_ids"} and len(out["decode_ms"]) == 3
    log.clear()
    mem = worker.memory_pass(method, None, ids, "cpu")
    # pinned and trimmed first; the heap trimmed again before every sample; one sampler thread
    assert log[:3] == [("mallopt", measure.M_MMAP_THRESHOLD, measure.PINNED_MMAP_THRESHOLD),
                       ("mallopt", measure.M_TRIM_THRESHOLD, measure.PINNED_TRIM_THRESHOLD), ("malloc_trim", 0)]
    assert [e for e in log[3:] if e != ("malloc_trim", 0)] == [("prefill", threads + 1)]
    assert log[3:].count(("malloc_trim", 0)) >= len(mem["samples"].values)
    assert mem["allocator"].startswith("glibc pinned") and measure.allocator_settings() == mem["allocator"]
    assert threading.active_count() == threads  # the sampler is gone again


def test_trace_max_matches_the_kernel_peak(fake_allocator):
    import torch

    from segbench import worker

    block = 32 << 20
    mem = worker.memory_pass(StepAllocator([], blocks=6, block_bytes=block), None, torch.zeros(1, 4), "cpu")
    host = mem["host"]
    assert host.delta_bytes >= 0.9 * 6 * block, host  # control: the kernel saw the buffers
    weights = 50 << 20
    trace = memtrace.build_trace("h", "cpu", mem["samples"], weights_bytes=weights, ttft_s=mem["ttft_s"],
                                 rss_before_bytes=host.rss_before_bytes)
    peak = weights + host.delta_bytes
    assert abs(max(trace["bytes"]) - peak) <= 0.03 * peak, (max(trace["bytes"]), peak)
    assert all(b > a for a, b in zip(trace["t_s"], trace["t_s"][1:]))
    assert trace["t_s"][-1] <= mem["ttft_s"] + 0.05


def test_memory_pass_on_cuda_samples_allocator_and_nvml_with_fakes(fake_allocator, monkeypatch):
    import torch

    from segbench import worker

    allocated = {"bytes": 1000}

    class FakeCudaPeak:
        def __enter__(self):
            return measure.CudaPeak(max_allocated_bytes=7, max_reserved_bytes=9)

        def __exit__(self, *exc):
            pass

    class Method(StepAllocator):
        def prefill(self, model, input_ids):
            allocated["bytes"], fake.used = 5000, 4800  # what the allocator and the driver see now
            time.sleep(0.02)
            allocated["bytes"], fake.used = 1500, 1300
            return super().prefill(model, input_ids)

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_stats_as_nested_dict",
                        lambda *a, **k: {"allocated_bytes": {"all": {"current": allocated["bytes"]}}})
    monkeypatch.setattr(measure, "CudaAllocatorPeak", FakeCudaPeak)
    fake = FakeNvml(pid=4242)
    fake.used = 900
    mem = worker.memory_pass(Method([], blocks=1, block_bytes=1 << 20), None, torch.zeros(1, 4), "cuda",
                             nvml=(fake, None, 800))
    assert mem["cuda"].max_allocated_bytes == 7 and mem["nvml"].peak_used_bytes == 4800
    assert mem["host"].rss_before_bytes > 0  # host RSS is tracked on GPU cells too
    trace = memtrace.build_trace("h", "cuda", mem["samples"], weights_bytes=1000, ttft_s=mem["ttft_s"])
    assert trace["source"] == "cuda_allocated" and max(trace["bytes"]) == 5000
    assert max(trace["nvml_used_bytes"]) == 4800 - 800  # over the idle baseline, as the row's NVML column
    assert mem["allocator"].startswith("glibc pinned")  # same structure as on the CPU: pinned, last
