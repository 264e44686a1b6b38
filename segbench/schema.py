"""The result row: one cell, one row. Every column, its type and what it means, in one place.

The README's column table, the store's parquet schema and the dashboard's loader all read this
list, so a column is added here or nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("ok", "oom", "timeout", "killed", "error", "unsupported", "skipped", "lost")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # "str" | "int" | "float" | "bool" | "json" | "list[int]"
    doc: str


COLUMNS: tuple[Column, ...] = (
    # --- what the cell is
    Column("suite", "str", "Suite name (the YAML's `name`, else its file stem)."),
    Column("method", "str", "Registered method name (`segbench methods`)."),
    Column("label", "str", "The suite's label for this method entry (defaults to the method name)."),
    Column("params", "json", "The method's full parameters, defaults filled in, as JSON."),
    Column("model", "str", "Preset name or local model path."),
    Column("model_trained", "bool", "False for random-weight presets: accuracy of such a model is chance."),
    Column("dtype", "str", "Weights and activations dtype (bfloat16, float16, float32)."),
    Column("device", "str", "Device kind the cell ran on: cpu or cuda."),
    Column("context_len", "int", "Prompt length in tokens."),
    Column("decode_tokens", "int", "Greedy tokens generated after prefill."),
    Column("task", "str", "Accuracy task, or empty for the latency workload."),
    Column("repeat_group", "int", "Which independent process repeat of this cell (0-based)."),
    Column("config_hash", "str", "Hash of the canonical cell config: the key for resume."),
    # --- outcome
    Column("status", "str", "ok | oom | timeout | killed | error | unsupported | skipped | lost."),
    Column("status_detail", "str", "Why, for anything but ok: the exception's last line, the signal, the limit."),
    # --- memory
    Column("peak_prefill_mem_bytes", "int", "Headline peak memory of prefill, weights included (see peak_mem_source)."),
    Column("peak_prefill_over_weights_bytes", "int", "peak_prefill_mem_bytes minus weights_bytes: where methods differ."),
    Column("peak_mem_source", "str", "Which tracker gave the headline: cuda_max_allocated or cpu_rss_hwm."),
    Column("cuda_max_allocated_bytes", "int", "torch.cuda.max_memory_allocated over prefill (GPU only)."),
    Column("cuda_max_reserved_bytes", "int", "torch.cuda.max_memory_reserved over prefill (GPU only)."),
    Column("nvml_peak_used_bytes", "int", "NVML device used memory peak over prefill minus the idle baseline (GPU only)."),
    Column("nvml_process_peak_bytes", "int", "NVML peak memory of this process over prefill (GPU only, where the driver reports it)."),
    Column("cpu_rss_before_prefill_bytes", "int", "Process RSS just before the memory pass's prefill (CPU only)."),
    Column("cpu_rss_peak_delta_bytes", "int", "Peak RSS during prefill minus RSS before it (CPU only; the headline's part over the weights)."),
    Column("host_rss_peak_delta_bytes", "int", "Peak host RSS during prefill minus RSS before it, on every device (a GPU cell's host-side pool, e.g. pool_device: cpu, shows here)."),
    Column("peak_mem_pass", "str", "Which pass produced the memory columns: memory (one prefill of its own, after every timing pass)."),
    Column("peak_mem_allocator", "str", "Allocator settings of the memory pass (CPU: glibc mmap/trim thresholds pinned and the heap trimmed, so freed buffers leave RSS)."),
    Column("timeline_samples", "int", "Points in this cell's memory timeline, traces/<config_hash>.json (0 when none, e.g. a failed cell)."),
    Column("kv_cache_bytes", "int", "Bytes of KV the method stores after prefill (what decode reads)."),
    Column("weights_bytes", "int", "Bytes of model parameters and buffers."),
    Column("est_kv_cache_bytes", "int", "The method's analytic estimate of kv_cache_bytes (segbench estimate); in failed rows too."),
    Column("est_peak_prefill_bytes", "int", "The method's analytic estimate of peak prefill memory, weights included; in failed rows too."),
    # --- time
    Column("ttft_s", "float", "Median time to first token: prefill start (input on device) to first token, synchronised."),
    Column("ttft_s_all", "json", "Every timed repeat's TTFT, seconds."),
    Column("prefill_tokens_per_s", "float", "context_len / ttft_s."),
    Column("decode_ms_p50", "float", "Per-token decode latency, 50th percentile, ms."),
    Column("decode_ms_p90", "float", "Per-token decode latency, 90th percentile, ms."),
    Column("decode_ms_p99", "float", "Per-token decode latency, 99th percentile, ms."),
    Column("decode_tokens_per_s", "float", "Decode tokens per second over the whole decode."),
    Column("timing_pass", "str", "Which passes produced the time columns: timing (warmups and repeats with no memory tracker running)."),
    Column("timing_allocator", "str", "Allocator settings of the timing passes (CPU: glibc defaults, i.e. the dynamic mmap threshold users run with)."),
    Column("output_token_ids", "list[int]", "First 32 generated token ids: methods that should agree must agree."),
    Column("attention_backend", "str", "Attention kernel actually used (e.g. sdpa:flash, sdpa:math, flash_attn, triton)."),
    # --- accuracy (empty for latency cells)
    Column("n", "int", "Samples scored."),
    Column("score", "float", "Mean score in [0, 1] (task's official metric)."),
    Column("score_ci_low", "float", "95% interval, low."),
    Column("score_ci_high", "float", "95% interval, high."),
    Column("score_0_4k", "float", "LongBench-E: mean score of the samples with < 4000 words of context, in [0, 1]."),
    Column("score_4_8k", "float", "LongBench-E: mean score of the samples with 4000-7999 words of context, in [0, 1]."),
    Column("score_8k_plus", "float", "LongBench-E: mean score of the samples with >= 8000 words of context, in [0, 1]."),
    # --- provenance
    Column("git_sha", "str", "Commit of segbench that produced the row."),
    Column("git_dirty", "bool", "Whether the work tree had uncommitted changes."),
    Column("segbench_version", "str", "segbench package version."),
    Column("python", "str", "Python version."),
    Column("torch", "str", "torch version."),
    Column("transformers", "str", "transformers version."),
    Column("triton", "str", "triton version, or empty."),
    Column("flash_attn", "str", "flash-attn version, or empty when not installed."),
    Column("cuda", "str", "CUDA version torch was built with, or empty."),
    Column("driver", "str", "NVIDIA driver version, or empty."),
    Column("gpu_name", "str", "GPU name, or empty."),
    Column("cpu_name", "str", "CPU model name."),
    Column("hostname", "str", "Host that ran the cell."),
    Column("launcher", "str", "Which launcher ran the cell (local, ray, slurm)."),
    Column("started_at", "str", "UTC ISO-8601 time the cell started."),
    Column("duration_s", "float", "Wall time of the whole cell process, model build included."),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
COLUMN_BY_NAME = {c.name: c for c in COLUMNS}


def empty_row() -> dict:
    """A row with every column present and None, so partial rows (faults) are still complete."""
    return {name: None for name in COLUMN_NAMES}
