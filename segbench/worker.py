"""One cell, in its own fresh process: build the model, apply the method, measure, write one row.

This module is preloaded by the runner's forkserver (with torch and transformers), so a cell
process starts in milliseconds; nothing here may initialise CUDA at import time.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
import signal
import socket
import sys
import traceback
from pathlib import Path

import torch

from segbench import hf, measure, memtrace, store
from segbench.estimates import estimate_columns
from segbench.method import Method, Unsupported, load_plugins, make_method
from segbench.models import shape_of
from segbench.suite import Cell, Limits

OUTPUT_IDS_KEPT = 32


# --------------------------------------------------------------------------------------------
# Process set-up


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this cell if its parent (the forkserver) dies, so a killed runner leaves no orphan."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


def _cap_address_space(cap_gb: float) -> None:
    """RLIMIT_AS = what the process has mapped now + the cap: the cap is what the cell may add."""
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = vm_size + int(cap_gb * 1024**3)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if oom_type and isinstance(exc, oom_type):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "CUDA out of memory" in text or "out of memory" in text.lower()
    )


def last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    return f"{type(exc).__name__}: {text}"[:500]


def cell_main(cell: Cell, limits: Limits, plugins: tuple[str, ...], base_dir: str | None, result_path: str) -> None:
    """Entry point of the cell process. Always writes a row unless the process is killed."""
    # Already in a process group of its own, watching the runner's liveness pipe (segbench/cellproc.py).
    _die_with_parent()
    if cell.device == "cpu" and limits.host_mem_cap_gb:
        _cap_address_space(limits.host_mem_cap_gb)
    row: dict = {}
    try:
        load_plugins(plugins, Path(base_dir) if base_dir else None)
        row = execute(cell)
        row["status"] = "ok"
    except Unsupported as e:
        row.update(status="unsupported", status_detail=str(e)[:500])
    except BaseException as e:  # noqa: BLE001 - every fault is a result
        if is_oom(e):
            row.update(status="oom", status_detail=last_line(e))
        else:
            row.update(status="error", status_detail=last_line(e))
            if os.environ.get("SEGBENCH_DEBUG"):
                traceback.print_exc()
    row.update(environment(cell.device))
    store.write_json_atomic(Path(result_path), row)


# --------------------------------------------------------------------------------------------
# The measurement
#
# Two kinds of pass, so that memory and time do not distort each other:
# - timing passes (warmups, then the timed repeats; an accuracy cell's samples) run with the host
#   allocator as users run it and with no tracker thread: TTFT, decode latencies, output ids;
# - one memory pass, last: one prefill of the same input (the longest sample's, for an accuracy
#   cell) with glibc's thresholds pinned (measure.pin_malloc_thresholds: irreversible, hence last)
#   and the heap trimmed before every timeline sample (measure.trim_heap: the timing passes left a
#   large free heap that would otherwise inflate RSS), under the peak trackers, the NVML sampler
#   and the timeline sampler. The timing passes before it are its warmup.
# The row names both passes and the allocator settings each ran under.

TIMING_PASS = "timing"
MEMORY_PASS = "memory"


def execute(cell: Cell) -> dict:
    device = cell.device
    nvml, handle = (None, None)
    baseline_used = 0
    if device == "cuda":
        torch.cuda.set_device(0)
        nvml, handle = measure.nvml_open(0)
        if nvml is not None:
            baseline_used = nvml.nvmlDeviceGetMemoryInfo(handle).used  # before the model exists

    shape = shape_of(cell.model, cell.model_overrides)
    method = make_method(cell.method, cell.params)
    method.check(shape, cell.context_len)
    estimate = estimate_columns(cell)

    model = hf.build_model(
        cell.model, dtype=cell.dtype, device=device, overrides=cell.model_overrides, seed=cell.workload.seed
    )
    method.setup(model, device=device, dtype=cell.dtype)
    timing_allocator = measure.allocator_settings()
    extra: dict = {}
    if cell.task:
        from segbench.accuracy.harness import run_task

        longest: list[torch.Tensor] = []

        def timed_run(method, model, ids, *args, nvml=None, **kwargs):
            # The harness offers its NVML handle to the first sample; NVML now samples only in
            # the memory pass, which re-runs the longest sample's prefill (the cell's peak).
            if not longest or ids.shape[1] > longest[0].shape[1]:
                longest[:] = [ids]
            return run_once(method, model, ids, *args, **kwargs)

        hf.BACKENDS.reset()
        extra, runs, predictions = run_task(cell, method, model, device, timed_run)
        extra["_predictions"] = predictions
        memory_ids = longest[0]
    else:
        memory_ids = latency_input_ids(cell, shape.vocab_size, device)
        runs = latency_runs(cell, method, model, memory_ids, device)

    weights = hf.model_bytes(model)
    mem = memory_pass(method, model, memory_ids, device, (nvml, handle, baseline_used) if nvml is not None else None)
    ttfts = [r["ttft_s"] for r in runs]
    decode_ms = [ms for r in runs for ms in r["decode_ms"]]
    decode_total_s = sum(sum(r["decode_ms"]) for r in runs) / 1000.0
    decode_count = sum(len(r["decode_ms"]) for r in runs)
    row = {
        "weights_bytes": weights,
        "kv_cache_bytes": mem["kv_cache_bytes"],
        **estimate,
        "ttft_s": measure.median(ttfts),
        "ttft_s_all": ttfts,
        "prefill_tokens_per_s": cell.context_len / measure.median(ttfts) if cell.task == "" else None,
        "decode_ms_p50": measure.percentile(decode_ms, 50),
        "decode_ms_p90": measure.percentile(decode_ms, 90),
        "decode_ms_p99": measure.percentile(decode_ms, 99),
        "decode_tokens_per_s": decode_count / decode_total_s if decode_total_s > 0 else None,
        "output_token_ids": runs[0]["output_token_ids"],
        "attention_backend": method.attention_backend(),
        "timing_pass": TIMING_PASS,
        "timing_allocator": _allocator_text(device, timing_allocator),
        "peak_mem_pass": MEMORY_PASS,
        "peak_mem_allocator": _allocator_text(device, mem["allocator"]),
    }
    host = mem["host"]
    # The kernel's mark and the sampler are both lower bounds of the true peak RSS: the mark can
    # miss pages freed by madvise (malloc_trim frees that way) and the sampler short spikes; the
    # larger stands (on the tiny Llama they agree within ~3%, either one the larger).
    host_delta = host.delta_bytes
    if device == "cpu":
        host_delta = max(host_delta, max(mem["samples"].values) - host.rss_before_bytes)
    row["host_rss_peak_delta_bytes"] = host_delta
    if device == "cuda":
        row["cuda_max_allocated_bytes"] = mem["cuda"].max_allocated_bytes
        row["cuda_max_reserved_bytes"] = mem["cuda"].max_reserved_bytes
        row["peak_prefill_mem_bytes"] = row["cuda_max_allocated_bytes"]
        row["peak_mem_source"] = "cuda_max_allocated"
        nv = mem.get("nvml")
        if nv is not None:
            row["nvml_peak_used_bytes"] = nv.peak_over_baseline_bytes
            row["nvml_process_peak_bytes"] = nv.peak_process_bytes
    else:
        # The RSS before prefill already holds the weights (and the Python runtime, which is not
        # the method's): the headline is weights + what prefill added on top.
        row["cpu_rss_before_prefill_bytes"] = host.rss_before_bytes
        row["cpu_rss_peak_delta_bytes"] = host_delta
        row["peak_prefill_mem_bytes"] = weights + host_delta
        row["peak_mem_source"] = host.source
    row["peak_prefill_over_weights_bytes"] = row["peak_prefill_mem_bytes"] - weights
    trace = memtrace.build_trace(cell.config_hash, device, mem["samples"], weights_bytes=weights,
                                 ttft_s=mem["ttft_s"], rss_before_bytes=host.rss_before_bytes)
    row["_timeline"] = trace  # the store writes it to traces/<config_hash>.json and counts its points
    row.update(extra)
    return row


def _cuda_allocated_bytes() -> int:
    """torch.cuda.memory_allocated(0) without its flattening of every allocator statistic into a
    sorted dict (Python work under the GIL, every 2 ms, beside the thread launching prefill).
    Device 0 by index: a sampler thread has its own CUDA current device."""
    stats = torch.cuda.memory_stats_as_nested_dict(0)
    return stats["allocated_bytes"]["all"]["current"] if stats else 0


def _allocator_text(device: str, host_allocator: str) -> str:
    return f"cuda caching allocator; host: {host_allocator}" if device == "cuda" else host_allocator


def latency_input_ids(cell: Cell, vocab_size: int, device: str) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(cell.workload.seed + cell.context_len)
    # Ids from the ordinary vocabulary (ids below 3 are special in every preset).
    return torch.randint(3, vocab_size, (1, cell.context_len), generator=generator).to(device)


def latency_runs(cell: Cell, method: Method, model, input_ids: torch.Tensor, device: str) -> list[dict]:
    """Timing passes: warmups, then timed repeats of prefill + a fixed number of decode tokens."""
    for _ in range(cell.workload.warmup):
        run_once(method, model, input_ids, cell.workload.decode_tokens, device)
    hf.BACKENDS.reset()
    return [run_once(method, model, input_ids, cell.workload.decode_tokens, device)
            for _ in range(cell.workload.repeats)]


def run_once(method: Method, model, input_ids, decode_tokens: int, device: str,
             eos_id: int | None = None, keep: int = OUTPUT_IDS_KEPT) -> dict:
    """A timing pass: prefill timed to the first token, then greedy decode with per-step times.

    No memory tracker runs here (no sampler thread, no allocator setting): memory is the memory
    pass's job. Latency cells decode a fixed number of tokens (eos_id None); accuracy cells stop at
    EOS and keep every generated id (`keep`) for scoring.
    """
    out: dict = {}
    with torch.inference_mode():
        with measure.Stopwatch(device) as ttft:
            gen = method.prefill(model, input_ids)
            token = gen.logits.argmax(dim=-1, keepdim=True)
        out["ttft_s"] = ttft.seconds
        tokens = [token]
        steps = measure.StepTimes(device)
        for _ in range(decode_tokens):
            if eos_id is not None and int(token) == eos_id:  # a host sync, only on accuracy cells
                break
            t0 = steps.start()
            gen = method.decode(model, token, gen)
            token = gen.logits.argmax(dim=-1, keepdim=True)
            steps.stop(t0)
            tokens.append(token)
        out["decode_ms"] = steps.finish()
        ids = torch.cat(tokens, dim=1)[0].tolist()
        if eos_id is not None and eos_id in ids:
            ids = ids[: ids.index(eos_id)]
        out["output_token_ids"] = ids[:keep]
    del gen
    return out


def memory_pass(method: Method, model, input_ids, device: str, nvml=None,
                period_s: float = memtrace.PERIOD_S) -> dict:
    """The memory pass: one prefill under every memory tracker. The LAST pass of its process.

    It pins the host allocator for good (see measure.pin_malloc_thresholds), so nothing may be
    timed after it. Returns the trackers' records: `host` (peak RSS, on every device: a CPU pool
    of a GPU cell lives there), `cuda` and `nvml` on GPU, the timeline `samples`, the pass's own
    prefill time `ttft_s`, `kv_cache_bytes` and the `allocator` settings it ran under.
    """
    out: dict = {"allocator": measure.pin_malloc_thresholds()}
    with torch.inference_mode():
        with contextlib.ExitStack() as stack:
            nvml_probe = None
            if device == "cuda":
                out["cuda"] = stack.enter_context(measure.CudaAllocatorPeak())
                probe = _cuda_allocated_bytes
                if nvml is not None:
                    module, handle, baseline = nvml
                    out["nvml"] = stack.enter_context(measure.NvmlSampler(module, handle, baseline))
                    nvml_probe = lambda: module.nvmlDeviceGetMemoryInfo(handle).used - baseline  # noqa: E731
            else:
                probe = memtrace.statm_rss_bytes
            out["host"] = stack.enter_context(measure.CpuPeakRss())
            out["samples"] = stack.enter_context(memtrace.Sampler(probe, nvml_probe, period_s, measure.trim_heap))
            with measure.Stopwatch(device) as prefill:
                gen = method.prefill(model, input_ids)
                gen.logits.argmax(dim=-1, keepdim=True)  # the first token, as the timing passes do
        out["ttft_s"] = prefill.seconds
        out["kv_cache_bytes"] = method.kv_cache_bytes(gen)
    del gen
    return out


# --------------------------------------------------------------------------------------------
# Provenance of the machine


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(device: str) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "cpu_name": _cpu_name(),
        "hostname": socket.gethostname(),
        "driver": "",
        "gpu_name": "",
    }
    env.update(hf.versions())
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = ""
    if device == "cuda":
        nvml, handle = measure.nvml_open(0)
        if nvml is not None:
            env["driver"] = _text(nvml.nvmlSystemGetDriverVersion())
            env["gpu_name"] = _text(nvml.nvmlDeviceGetName(handle))
        elif torch.cuda.is_available():
            env["gpu_name"] = torch.cuda.get_device_name(0)
    return env


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


if __name__ == "__main__":  # pragma: no cover - the runner starts cells through multiprocessing
    sys.exit("segbench.worker is started by `segbench run`, not directly")
