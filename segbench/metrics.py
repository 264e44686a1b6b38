"""Metric names, units and formatting shared by the dashboard, the figures and the HTML report.

Pure Python and pandas: no UI package, so the report runs on a bare GPU image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


def is_missing(value) -> bool:
    """None, pandas' NA or a float NaN (a cell value that was not measured)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


GIB = 2**30


@dataclass(frozen=True)
class Metric:
    """How a metric column is named, shown and judged."""

    column: str
    label: str
    unit: str  # "bytes" | "s" | "ms" | "tok/s" | "score"
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    m.column: m
    for m in (
        Metric("peak_prefill_mem_bytes", "Peak prefill memory", "bytes", False),
        Metric("peak_prefill_over_weights_bytes", "Peak prefill minus weights", "bytes", False),
        Metric("kv_cache_bytes", "Stored KV cache", "bytes", False),
        Metric("est_peak_prefill_bytes", "Estimated peak prefill memory", "bytes", False),
        Metric("est_kv_cache_bytes", "Estimated KV cache", "bytes", False),
        Metric("ttft_s", "TTFT", "s", False),
        Metric("decode_ms_p50", "Decode latency p50", "ms", False),
        Metric("decode_ms_p90", "Decode latency p90", "ms", False),
        Metric("prefill_tokens_per_s", "Prefill tokens/s", "tok/s", True),
        Metric("decode_tokens_per_s", "Decode tokens/s", "tok/s", True),
        Metric("score", "Accuracy", "score", True),
    )
}

# Measured column -> its analytic estimate, drawn dashed beside it.
ESTIMATE_OF: dict[str, str] = {
    "kv_cache_bytes": "est_kv_cache_bytes",
    "peak_prefill_mem_bytes": "est_peak_prefill_bytes",
}

# An accuracy metric key names its task: "score:<task>". Accuracy lives on the task's own rows, so
# "accuracy" alone would mix tasks whose scores mean different things.
SCORE_PREFIX = "score:"

# The metrics offered as Pareto axes (accuracy keys are added per task present in the data).
PARETO_AXES: tuple[str, ...] = (
    "peak_prefill_mem_bytes",
    "peak_prefill_over_weights_bytes",
    "kv_cache_bytes",
    "ttft_s",
    "decode_ms_p50",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
)


def score_key(task: str) -> str:
    return f"{SCORE_PREFIX}{task}"


def is_score_key(key: str) -> bool:
    return key.startswith(SCORE_PREFIX)


def task_of(key: str) -> str | None:
    """The task an accuracy key names, or None for a plain metric column."""
    return key[len(SCORE_PREFIX) :] if is_score_key(key) else None


def metric_info(key: str) -> Metric:
    """The Metric for a column name or an accuracy key ("score:<task>")."""
    task = task_of(key)
    if task is not None:
        return Metric(key, f"Accuracy ({task})", "score", True)
    if key not in METRICS:
        raise KeyError(f"unknown metric {key!r}; known: {', '.join(METRICS)} or score:<task>")
    return METRICS[key]


MIB = 2**20
SCORE_UNIT = "×100"  # scores are stored as fractions in [0, 1]; published tables show them x100
_SCALE = {"GiB": GIB, "MiB": MIB, SCORE_UNIT: 0.01}


def _max_abs(values) -> float:
    v = pd.to_numeric(pd.Series(np.ravel(np.asarray(values, dtype=object))), errors="coerce").abs()
    return float(v.max()) if v.notna().any() else math.nan


def display_unit(key: str, values=None) -> str:
    """The unit a figure shows `key` in. Bytes follow format_bytes (the tables): MiB when every
    value in `values` is below 1 GiB, else GiB (GiB without values). Scores are shown x100."""
    unit = metric_info(key).unit
    if unit == "bytes":
        top = _max_abs(values) if values is not None else math.nan
        return "MiB" if top < GIB else "GiB"  # NaN (no values) compares False: GiB
    if unit == "score":
        return SCORE_UNIT
    return unit


def axis_title(key: str, unit: str | None = None) -> str:
    """ "Peak prefill memory (MiB)", "Accuracy (niah, ×100)": label and display unit."""
    unit = display_unit(key) if unit is None else unit
    label = metric_info(key).label
    if unit and label.endswith(")"):
        return f"{label[:-1]}, {unit})"
    return f"{label} ({unit})" if unit else label


def to_display(values: pd.Series | np.ndarray | float, key: str, unit: str | None = None):
    """Raw values in a display unit (default: display_unit(key) without data, i.e. GiB, x100)."""
    unit = display_unit(key) if unit is None else unit
    scale = _SCALE.get(unit) if metric_info(key).unit in ("bytes", "score") else None
    return values / scale if scale else values


def from_display(value: float, key: str, unit: str | None = None) -> float:
    """Inverse of to_display, for a threshold typed in display units (e.g. a MiB slider)."""
    unit = display_unit(key) if unit is None else unit
    scale = _SCALE.get(unit) if metric_info(key).unit in ("bytes", "score") else None
    return value * scale if scale else value


def picker_label(key: str) -> str:
    """A metric's name in pickers: with its unit where that is fixed (s, ms, x100); memory without,
    since its unit (MiB or GiB) depends on the data a figure shows, and the axis names it."""
    return metric_info(key).label if metric_info(key).unit == "bytes" else axis_title(key)


def format_bytes(n: float | None) -> str:
    """Binary units, so numbers match what nvidia-smi and torch report (GiB, not GB)."""
    if is_missing(n):
        return "–"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def format_value(key: str, value: float | None) -> str:
    if value is None or pd.isna(value):
        return "–"
    unit = metric_info(key).unit
    if unit == "bytes":
        return format_bytes(value)
    if unit == "score":
        return f"{100 * value:.1f}"  # x100, as published tables show accuracy
    return f"{value:.4g} {unit}"


def format_tokens(n: int) -> str:
    """Context lengths as people say them: 4096 -> 4K, 131072 -> 128K."""
    n = int(n)
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)
