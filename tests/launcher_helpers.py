"""Shared by the launcher tests: a small two-method suite and its rows from the local launcher."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from segbench.runner import run_suite
from segbench.store import CellStore
from segbench.suite import load_suite

from .helpers import HERE, write_suite

PLUGINS = [str(HERE / "fault_methods.py"), str(HERE / "launcher_methods.py")]

# Columns that differ between two runs of the same cell for reasons other than the launcher:
# clocks, RSS-based memory (the process around the cell differs), and where/when/by what it ran.
VARYING = {
    "ttft_s", "ttft_s_all", "prefill_tokens_per_s", "decode_ms_p50", "decode_ms_p90", "decode_ms_p99",
    "decode_tokens_per_s", "started_at", "duration_s", "cpu_rss_before_prefill_bytes", "cpu_rss_peak_delta_bytes",
    "host_rss_peak_delta_bytes", "timeline_samples", "peak_prefill_mem_bytes", "peak_prefill_over_weights_bytes",
    "launcher", "hostname", "git_sha", "git_dirty",
}

_KEEP: list[tempfile.TemporaryDirectory] = []


def small_suite(tmp_path: Path, name: str = "launch") -> Path:
    """Two methods x contexts [32, 64]: four cells of the tiny Llama."""
    return write_suite(
        tmp_path, name=name, contexts=[32, 64], plugins=PLUGINS,
        methods=[{"method": "full", "label": "one-shot"},
                 {"method": "full", "label": "chunked", "params": {"prefill": "chunked", "chunk_size": 16}}],
    )


@functools.cache
def local_rows() -> dict[str, dict]:
    """The small suite's rows from the local launcher, by config hash (run once per test session)."""
    tmp = tempfile.TemporaryDirectory(prefix="segbench-local-reference-")
    _KEEP.append(tmp)
    summary = run_suite(load_suite(small_suite(Path(tmp.name))), Path(tmp.name) / "out", progress=False)
    return {r["config_hash"]: r for r in CellStore(summary.suite_dir).rows()}


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VARYING}
