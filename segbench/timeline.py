"""Memory over time during prefill, per cell: reading the traces the worker writes, and the view the
Timeline page and figure draw. Pure pandas/numpy, no UI package.

Contract (written by the worker, one file per cell that sampled memory):
`<suite_dir>/traces/<config_hash>.json`, one JSON object
    {"config_hash": str, "source": "cpu_rss" | "cuda_allocated",
     "t_s": [float, ...],            seconds from prefill start
     "bytes": [int, ...],            same basis as the row's peak_prefill_mem_bytes (weights included)
     "nvml_used_bytes": [int, ...] | null,
     "ttft_s": float, "weights_bytes": int}
Rows may carry `timeline_samples` (0 or missing when there is none); the file itself decides here,
so traces are found whether or not the loaded schema knows that column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segbench import analysis as an

TRACES_DIR = "traces"
SOURCES = ("cpu_rss", "cuda_allocated")
# A few ms apart over a long prefill is thousands of samples per method; the figure keeps at most
# this many per line, each the maximum of its time bucket, so the peak is never smoothed away.
MAX_POINTS = 2000


class TraceError(ValueError):
    """A trace file that does not follow the contract: one line saying what is wrong."""


@dataclass(frozen=True)
class Trace:
    config_hash: str
    source: str  # what was sampled: cpu_rss or cuda_allocated
    t_s: np.ndarray
    bytes: np.ndarray
    nvml_used_bytes: np.ndarray | None
    ttft_s: float
    weights_bytes: int


def trace_path(suite_dir: str | Path, config_hash: str) -> Path:
    return Path(suite_dir) / TRACES_DIR / f"{config_hash}.json"


def _numbers(obj: dict, key: str, path: Path) -> np.ndarray:
    values = obj.get(key)
    if not isinstance(values, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise TraceError(f"{path}: `{key}` is not a list of numbers")
    out = np.asarray(values, dtype=float)
    if not np.isfinite(out).all():
        raise TraceError(f"{path}: `{key}` holds a non-finite value")
    return out


def read_trace(path: str | Path) -> Trace:
    """One trace file, checked against the contract (TraceError names the first problem)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TraceError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise TraceError(f"{path}: not a JSON object")
    t, b = _numbers(obj, "t_s", path), _numbers(obj, "bytes", path)
    nvml = None if obj.get("nvml_used_bytes") is None else _numbers(obj, "nvml_used_bytes", path)
    if len(t) == 0 or len(t) != len(b) or (nvml is not None and len(nvml) != len(t)):
        raise TraceError(f"{path}: t_s, bytes (and nvml_used_bytes) must be non-empty and equally long")
    if (np.diff(t) < 0).any():
        raise TraceError(f"{path}: t_s goes backwards")
    ttft, weights = obj.get("ttft_s"), obj.get("weights_bytes")
    return Trace(
        config_hash=str(obj.get("config_hash", path.stem)),
        source=str(obj.get("source", "")),
        t_s=t,
        bytes=b,
        nvml_used_bytes=nvml,
        ttft_s=float(ttft) if isinstance(ttft, (int, float)) else math.nan,
        weights_bytes=int(weights) if isinstance(weights, (int, float)) else 0,
    )


def decimate(t: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` samples: the largest y of each equal-count bucket, at its own time."""
    if len(t) <= max_points:
        return t, y
    edges = np.linspace(0, len(t), max_points + 1).astype(int)
    keep = [lo + int(np.argmax(y[lo:hi])) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]
    return t[keep], y[keep]


def _has_trace(df: pd.DataFrame) -> pd.Series:
    """Whether each row's trace file exists (rows without source or hash have none)."""
    if df.empty:
        return pd.Series([], index=df.index, dtype=bool)
    if "timeline_samples" in df.columns:
        said_none = pd.to_numeric(df["timeline_samples"], errors="coerce").fillna(-1) == 0
    else:
        said_none = pd.Series(False, index=df.index)
    found = [
        bool(src) and isinstance(h, str) and bool(h) and not none and trace_path(src, h).is_file()
        for src, h, none in zip(df["source"], df["config_hash"], said_none, strict=True)
    ]
    return pd.Series(found, index=df.index, dtype=bool)


def traced_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Latency rows (any status: an OOM's trace shows where it died) that have a trace file."""
    rows = df[~an.is_accuracy_row(df)]
    return rows[_has_trace(rows)]


def contexts_with_traces(df: pd.DataFrame) -> list[int]:
    return sorted(int(c) for c in traced_rows(df)["context_len"].dropna().unique())


@dataclass(frozen=True)
class TimelineView:
    context_len: int
    lines: pd.DataFrame  # series, t_s, bytes, nvml_used_bytes (decimated), one block per series
    summary: pd.DataFrame  # per series: peak_bytes, t_peak_s, ttft_s, weights_bytes, samples, ...
    untraced: pd.DataFrame  # latency cells at this context without a trace: series, status
    notes: list[str]  # trace files skipped, and why

    @property
    def weights_bytes(self) -> float | None:
        """The weights line when every traced cell loaded the same weights, else None."""
        w = set(self.summary["weights_bytes"].dropna().astype(int)) if not self.summary.empty else set()
        return float(w.pop()) if len(w) == 1 else None


SUMMARY_COLUMNS = ("series", "method", "label", "status", "source_kind", "samples", "peak_bytes", "t_peak_s",
                   "ttft_s", "weights_bytes", "row_peak_bytes", "repeat_group", "config_hash", "run")  # fmt: skip


def timeline_view(df: pd.DataFrame, context_len: int, *, max_points: int = MAX_POINTS) -> TimelineView:
    """Every series' memory trace at one context: one cell per series (its lowest repeat_group with
    a trace), so methods are overlaid on one time axis from prefill start."""
    latency = df[~an.is_accuracy_row(df)]
    qualify = an.varying(latency)
    at = latency[latency["context_len"] == context_len]
    at = an.with_series(at, qualify)
    has = _has_trace(at)
    notes: list[str] = []
    lines, summary = [], []
    chosen = at[has].sort_values(["series", "repeat_group"], kind="stable", na_position="last")
    for series, g in chosen.groupby("series", sort=True):
        for _, row in g.iterrows():  # the first readable repeat
            try:
                trace = read_trace(trace_path(row["source"], row["config_hash"]))
            except TraceError as e:
                notes.append(str(e))
                continue
            t, b = decimate(trace.t_s, trace.bytes, max_points)
            nvml = None
            if trace.nvml_used_bytes is not None:
                _, nvml = decimate(trace.t_s, trace.nvml_used_bytes, max_points)
                nvml = nvml if len(nvml) == len(t) else None
            lines.append(
                pd.DataFrame(
                    {"series": series, "t_s": t, "bytes": b,
                     "nvml_used_bytes": nvml if nvml is not None else np.full(len(t), np.nan)}
                )
            )  # fmt: skip
            peak = int(np.argmax(trace.bytes))
            summary.append(
                {"series": series, "method": row["method"], "label": row["label"], "status": row["status"],
                 "source_kind": trace.source, "samples": len(trace.t_s), "peak_bytes": float(trace.bytes[peak]),
                 "t_peak_s": float(trace.t_s[peak]), "ttft_s": trace.ttft_s,
                 "weights_bytes": trace.weights_bytes, "row_peak_bytes": row["peak_prefill_mem_bytes"],
                 "repeat_group": row["repeat_group"], "config_hash": row["config_hash"], "run": row.get("run")}
            )  # fmt: skip
            break
    traced = {s["series"] for s in summary}
    untraced = at[~at["series"].isin(traced)].drop_duplicates("series")
    return TimelineView(
        context_len=int(context_len),
        lines=pd.concat(lines, ignore_index=True)
        if lines
        else pd.DataFrame(columns=["series", "t_s", "bytes", "nvml_used_bytes"]),
        summary=pd.DataFrame(summary, columns=list(SUMMARY_COLUMNS)),
        untraced=untraced[["series", "status", "status_detail", "config_hash"]].reset_index(drop=True),
        notes=notes,
    )


def trace_sources(view: TimelineView) -> Sequence[str]:
    """What the lines measure (cpu_rss, cuda_allocated): mixing them on one axis needs saying."""
    return sorted(set(view.summary["source_kind"].dropna()) - {""})
