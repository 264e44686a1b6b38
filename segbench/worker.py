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

from segbench import hf, measure, store
from segbench.method import Method, Unsupported, load_plugins, make_method
from segbench.models import DTYPE_BYTES, shape_of
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
    measure.pin_malloc_thresholds()
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
    dtype_bytes = DTYPE_BYTES[cell.dtype]
    estimate = method.estimate(shape, cell.context_len, dtype_bytes, device)

    model = hf.build_model(
        cell.model, dtype=cell.dtype, device=device, overrides=cell.model_overrides, seed=cell.workload.seed
    )
    method.setup(model, device=device, dtype=cell.dtype)
    nvml_args = (nvml, handle, baseline_used) if nvml is not None else None
    extra: dict = {}
    if cell.task:
        from segbench.accuracy.harness import run_task

        hf.BACKENDS.reset()
        extra, runs, predictions = run_task(cell, method, model, device, run_once, nvml=nvml_args)
        extra["_predictions"] = predictions
    else:
        runs = latency_runs(cell, method, model, shape.vocab_size, device, nvml_args)

    weights = hf.model_bytes(model)
    ttfts = [r["ttft_s"] for r in runs]
    decode_ms = [ms for r in runs for ms in r["decode_ms"]]
    decode_total_s = sum(sum(r["decode_ms"]) for r in runs) / 1000.0
    decode_count = sum(len(r["decode_ms"]) for r in runs)
    row = {
        "weights_bytes": weights,
        "kv_cache_bytes": runs[0]["kv_cache_bytes"],
        "est_kv_cache_bytes": estimate.stored_kv_bytes,
        "est_peak_prefill_bytes": estimate.peak_prefill_bytes,
        "ttft_s": measure.median(ttfts),
        "ttft_s_all": ttfts,
        "prefill_tokens_per_s": cell.context_len / measure.median(ttfts) if cell.task == "" else None,
        "decode_ms_p50": measure.percentile(decode_ms, 50),
        "decode_ms_p90": measure.percentile(decode_ms, 90),
        "decode_ms_p99": measure.percentile(decode_ms, 99),
        "decode_tokens_per_s": decode_count / decode_total_s if decode_total_s > 0 else None,
        "output_token_ids": runs[0]["output_token_ids"],
        "attention_backend": method.attention_backend(),
    }
    if device == "cuda":
        row["cuda_max_allocated_bytes"] = max(r["cuda_max_allocated_bytes"] for r in runs)
        row["cuda_max_reserved_bytes"] = max(r["cuda_max_reserved_bytes"] for r in runs)
        row["peak_prefill_mem_bytes"] = row["cuda_max_allocated_bytes"]
        row["peak_mem_source"] = "cuda_max_allocated"
        nv = runs[0].get("nvml")
        if nv is not None:
            row["nvml_peak_used_bytes"] = nv.peak_over_baseline_bytes
            row["nvml_process_peak_bytes"] = nv.peak_process_bytes
    else:
        # The RSS before prefill already holds the weights (and the Python runtime, which is not
        # the method's): the headline is weights + what prefill added on top.
        delta = max(r["cpu"].delta_bytes for r in runs)
        row["cpu_rss_before_prefill_bytes"] = runs[0]["cpu"].rss_before_bytes
        row["cpu_rss_peak_delta_bytes"] = delta
        row["peak_prefill_mem_bytes"] = weights + delta
        row["peak_mem_source"] = runs[0]["cpu"].source
    row["peak_prefill_over_weights_bytes"] = row["peak_prefill_mem_bytes"] - weights
    row.update(extra)
    return row


def latency_runs(cell: Cell, method: Method, model, vocab_size: int, device: str, nvml_args) -> list[dict]:
    """Warmups, then timed repeats of prefill + a fixed number of decode tokens on random ids."""
    generator = torch.Generator(device="cpu").manual_seed(cell.workload.seed + cell.context_len)
    # Ids from the ordinary vocabulary (ids below 3 are special in every preset).
    input_ids = torch.randint(3, vocab_size, (1, cell.context_len), generator=generator).to(device)
    for _ in range(cell.workload.warmup):
        run_once(method, model, input_ids, cell.workload.decode_tokens, device)
    hf.BACKENDS.reset()
    return [
        # an NVML sampler thread only on the first repeat, where it is the figure
        run_once(method, model, input_ids, cell.workload.decode_tokens, device, nvml=nvml_args if rep == 0 else None)
        for rep in range(cell.workload.repeats)
    ]


def run_once(method: Method, model, input_ids, decode_tokens: int, device: str, nvml=None,
             eos_id: int | None = None, keep: int = OUTPUT_IDS_KEPT) -> dict:
    """Prefill (memory-tracked, timed to the first token), then greedy decode with per-step times.

    Latency cells decode a fixed number of tokens (eos_id None); accuracy cells stop at EOS and
    keep every generated id (`keep`) for scoring.
    """
    out: dict = {}
    with torch.inference_mode():
        with contextlib.ExitStack() as stack:
            if device == "cuda":
                cuda_peak = stack.enter_context(measure.CudaAllocatorPeak())
                if nvml is not None:
                    module, handle, baseline = nvml
                    out["nvml"] = stack.enter_context(measure.NvmlSampler(module, handle, baseline))
            else:
                out["cpu"] = stack.enter_context(measure.CpuPeakRss())
            with measure.Stopwatch(device) as ttft:
                gen = method.prefill(model, input_ids)
                token = gen.logits.argmax(dim=-1, keepdim=True)
        if device == "cuda":
            out["cuda_max_allocated_bytes"] = cuda_peak.max_allocated_bytes
            out["cuda_max_reserved_bytes"] = cuda_peak.max_reserved_bytes
        out["ttft_s"] = ttft.seconds
        out["kv_cache_bytes"] = method.kv_cache_bytes(gen)
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
