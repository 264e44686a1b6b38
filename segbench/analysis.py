"""The data layer behind the dashboard and the HTML report: pure functions, pandas in, pandas out.

Nothing here imports a UI package, so `segbench report` can use it on a bare GPU image. Result files
are read as JSON or parquet only (never pickle, never eval): they may come from another machine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segbench import store
from segbench.schema import COLUMN_BY_NAME, COLUMN_NAMES, STATUSES

# ----------------------------------------------------------------------------------------------
# Metric names and units
# ----------------------------------------------------------------------------------------------

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


def display_unit(key: str) -> str:
    unit = metric_info(key).unit
    return {"bytes": "GiB", "score": ""}.get(unit, unit)


def axis_title(key: str) -> str:
    unit = display_unit(key)
    return f"{metric_info(key).label} ({unit})" if unit else metric_info(key).label


def to_display(values: pd.Series | np.ndarray | float, key: str):
    """Raw values in the unit axes show: bytes become GiB, everything else is unchanged."""
    return values / GIB if metric_info(key).unit == "bytes" else values


def from_display(value: float, key: str) -> float:
    """Inverse of to_display, for a threshold typed in display units (e.g. a GiB slider)."""
    return value * GIB if metric_info(key).unit == "bytes" else value


def format_bytes(n: float | None) -> str:
    """Binary units, so numbers match what nvidia-smi and torch report (GiB, not GB)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
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
        return f"{value:.3f}"
    return f"{value:.4g} {unit}"


def format_tokens(n: int) -> str:
    """Context lengths as people say them: 4096 -> 4K, 131072 -> 128K."""
    n = int(n)
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

RESULTS_PARQUET = "results.parquet"
CELLS_DIR = "cells"
LOAD_NOTES = "load_notes"  # df.attrs key: human-readable problems found while loading


def find_suite_dirs(path: str | Path) -> list[Path]:
    """Suite directories at or under `path`; the store's own discovery, so report and dashboard agree."""
    return store.suite_dirs(path)


def _read_cells(cells_dir: Path, notes: list[str]) -> pd.DataFrame:
    records = []
    for f in sorted(cells_dir.glob("*.json")):
        if not f.is_file():  # a FIFO or a folder would block or fail the read
            notes.append(f"{f}: not a regular file, skipped")
            continue
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            # A cell being written right now, or a truncated one: skip it, say so.
            notes.append(f"{f}: unreadable ({type(e).__name__}: {e})")
            continue
        if not isinstance(obj, dict):
            notes.append(f"{f}: not a JSON object, skipped")
            continue
        records.append(obj)
    return pd.DataFrame.from_records(records) if records else pd.DataFrame()


def _read_suite(suite_dir: Path, notes: list[str]) -> pd.DataFrame:
    parquet = suite_dir / RESULTS_PARQUET
    if parquet.is_file():
        cells = suite_dir / CELLS_DIR
        if cells.is_dir():
            newer = sum(1 for f in cells.glob("*.json") if f.stat().st_mtime > parquet.stat().st_mtime)
            if newer:
                notes.append(f"{parquet}: {newer} cell file(s) are newer; run `segbench report {suite_dir}`")
        try:
            return pd.read_parquet(parquet)
        except Exception as e:  # noqa: BLE001 - a corrupt file must not hide the suites beside it
            notes.append(f"{parquet}: unreadable ({type(e).__name__}), skipped")
    return _read_cells(suite_dir / CELLS_DIR, notes)


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _canonical_json(value):
    """JSON columns become canonical text, so they can be grouped, merged and shown in tables."""
    if _missing(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.ndarray):  # parquet list columns come back as arrays
        value = value.tolist()
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _to_bool(value):
    if _missing(value):
        return pd.NA
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        return pd.NA
    return bool(value)


def _coerce(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Give every schema column its schema type; values that do not fit become missing, noted."""
    out = {}
    for name in COLUMN_NAMES:
        s = df[name]
        kind = COLUMN_BY_NAME[name].dtype
        if kind in ("int", "float"):
            num = pd.to_numeric(s, errors="coerce")
            bad = int((num.isna() & s.notna()).sum())
            if kind == "int":
                fractional = num.notna() & (num != np.floor(num))
                bad += int(fractional.sum())
                num = num.where(~fractional).astype("Int64")
            else:
                num = num.astype("float64")
            if bad:
                notes.append(f"column {name}: {bad} value(s) are not {kind} and were dropped")
            out[name] = num
        elif kind == "bool":
            out[name] = s.map(_to_bool).astype("boolean")
        elif kind in ("json", "list[int]"):
            out[name] = s.map(_canonical_json).astype(object)
        else:
            out[name] = s.map(lambda v: None if _missing(v) else str(v)).astype("str")
    return pd.DataFrame(out, index=df.index)


def empty_results() -> pd.DataFrame:
    """A typed frame with every schema column and `source`, no rows."""
    df = _coerce(pd.DataFrame({c: pd.Series([], dtype=object) for c in COLUMN_NAMES}), [])
    df["source"] = pd.Series([], dtype="str")
    return df


def _conform(raw: pd.DataFrame, source: str, notes: list[str]) -> pd.DataFrame:
    unknown = sorted(set(raw.columns) - set(COLUMN_NAMES) - {"source"})
    if unknown:
        notes.append(f"{source or 'results'}: unknown column(s) dropped: {', '.join(map(str, unknown))}")
    sources = raw["source"] if "source" in raw.columns else None
    raw = raw.reindex(columns=list(COLUMN_NAMES))  # adds missing columns as NaN
    raw = raw.astype(object).where(raw.notna(), None)
    typed = _coerce(raw, notes)
    if source or sources is None:
        typed["source"] = source
    else:
        typed["source"] = sources.fillna("").astype(str)
    typed["source"] = typed["source"].astype("str")
    return typed


def conform(df: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """Any frame of result rows (e.g. the store's) typed and shaped exactly as load_results returns.

    Keeps an existing `source` column unless `source` is given. Problems go to attrs["load_notes"].
    """
    notes: list[str] = list(df.attrs.get(LOAD_NOTES, []))
    out = _conform(df, source, notes) if not df.empty else empty_results()
    _check_statuses(out, notes)
    out.attrs[LOAD_NOTES] = notes
    return out


def _check_statuses(df: pd.DataFrame, notes: list[str]) -> None:
    bad_status = sorted(set(df["status"].dropna()) - set(STATUSES))
    if bad_status:
        notes.append(f"unknown status value(s): {', '.join(bad_status)}")


def load_results(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Every cell under `paths`, one row each, typed per segbench.schema, plus a `source` column.

    Each path is a suite dir (results.parquet, else cells/*.json) or a parent of several. Columns
    the schema lacks are dropped, missing ones added as None; what was wrong is listed in
    `df.attrs["load_notes"]` so a UI can show it instead of failing.
    """
    notes: list[str] = []
    frames = []
    for path in paths:
        suites = find_suite_dirs(path)
        if not suites:
            notes.append(f"{path}: no results.parquet or cells/ found")
        for suite_dir in suites:
            raw = _read_suite(suite_dir, notes)
            if not raw.empty:
                frames.append(_conform(raw, str(suite_dir), notes))
    df = pd.concat(frames, ignore_index=True) if frames else empty_results()
    _check_statuses(df, notes)
    df.attrs[LOAD_NOTES] = notes
    return df


# ----------------------------------------------------------------------------------------------
# Row selection
# ----------------------------------------------------------------------------------------------

# What identifies a measured point across repeats (and across the latency and accuracy rows of
# the same configuration, which differ in task and decode length).
POINT_KEYS: tuple[str, ...] = (
    "source",
    "suite",
    "method",
    "label",
    "params",
    "model",
    "dtype",
    "device",
    "context_len",
)
REPEAT_KEYS: tuple[str, ...] = (*POINT_KEYS, "model_trained", "decode_tokens", "task", "status")
# What a plotted point carries besides its numbers, so a hover can say where it came from.
PROVENANCE: tuple[str, ...] = (
    "repeat_group",
    "config_hash",
    "status_detail",
    "weights_bytes",
    "attention_backend",
    "git_sha",
    "git_dirty",
    "segbench_version",
    "gpu_name",
    "cpu_name",
    "hostname",
    "started_at",
)


def slim(df: pd.DataFrame, metrics: Sequence[str] = ()) -> pd.DataFrame:
    """Only identity, provenance and the given metric columns (with their CIs and estimates).

    Every filter and copy of the ~60-column frame costs in proportion to its width; a plot needs
    a fraction of it.
    """
    extra = [c for m in metrics for c in (m, f"{m}_ci_low", f"{m}_ci_high", ESTIMATE_OF.get(m))]
    wanted = dict.fromkeys([*REPEAT_KEYS, *PROVENANCE, *(c for c in extra if c)])
    return df[[c for c in wanted if c in df.columns]]


def is_accuracy_row(df: pd.DataFrame) -> pd.Series:
    return df["task"].notna() & (df["task"] != "")


def tasks(df: pd.DataFrame) -> list[str]:
    return sorted(df.loc[is_accuracy_row(df), "task"].unique().tolist())


def rows_for(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """The rows a metric key is measured on: its task's rows for accuracy, latency rows otherwise."""
    task = task_of(key)
    if task is not None:
        return df[df["task"] == task]
    return df[~is_accuracy_row(df)]


def available_metrics(df: pd.DataFrame, candidates: Sequence[str] = PARETO_AXES) -> list[str]:
    """Candidate metric keys that have at least one value in `df`, then one accuracy key per task."""
    lat = df[~is_accuracy_row(df)]
    keys = [k for k in candidates if k in lat.columns and lat[k].notna().any()]
    acc = df[is_accuracy_row(df)]
    keys += [score_key(t) for t in tasks(df) if acc.loc[acc["task"] == t, "score"].notna().any()]
    return keys


def chance_accuracy(df: pd.DataFrame) -> bool:
    """Whether any accuracy row came from a random-weight model: its score is chance, not skill."""
    acc = df[is_accuracy_row(df)]
    return bool((acc["model_trained"] == False).any())  # noqa: E712 - nullable boolean column


QUALIFIERS: tuple[str, ...] = ("model", "source")


def varying(df: pd.DataFrame, columns: Sequence[str] = QUALIFIERS) -> list[str]:
    """The columns among `columns` that take more than one value in `df`."""
    return [c for c in columns if c in df.columns and df[c].nunique(dropna=False) > 1]


def series_names(df: pd.DataFrame, qualify: Sequence[str] | None = None) -> pd.Series:
    """One legend name per row: the label, qualified by model and source where those vary.

    Pass `qualify` (from varying() on the whole data) to name subsets consistently.
    """
    names = df["label"].fillna(df["method"]).fillna("?").astype(str)
    for col in varying(df) if qualify is None else qualify:
        names = names + " · " + df[col].fillna("?").astype(str).map(lambda s: Path(s).name or s)
    return names


# ----------------------------------------------------------------------------------------------
# Repeats
# ----------------------------------------------------------------------------------------------

# Two-sided 95% Student t quantiles t_{0.975, dof} for dof 1..30 (standard table values).
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t_quantile_975(dof: int) -> float:
    """t_{0.975, dof}: the table up to 30, then the Cornish-Fisher expansion (error < 1e-4)."""
    if dof < 1:
        raise ValueError("a t interval needs at least 2 samples")
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval of independent repeats; the interval is NaN with fewer than 2."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = t_quantile_975(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean, mean - half, mean + half


def aggregate_repeats(
    df: pd.DataFrame, metrics: Sequence[str], keys: Sequence[str] = REPEAT_KEYS
) -> pd.DataFrame:
    """One row per repeat group: each metric's mean with `<metric>_ci_low/_ci_high` (95% t-interval).

    Other columns are those of the group's first row (its provenance, for hover). A metric measured
    once keeps the interval its row already carries (a task's score CI), else has none.
    `n_repeats` counts the rows merged. The index is the first row's index.
    """
    keys = [k for k in keys if k in df.columns]
    if df.empty:
        out = df.copy()
        for m in metrics:
            out[f"{m}_ci_low"] = pd.Series(dtype=float)
            out[f"{m}_ci_high"] = pd.Series(dtype=float)
        out["n_repeats"] = pd.Series(dtype="int64")
        return out
    gid = df.groupby(keys, dropna=False, sort=False).ngroup() if keys else pd.Series(0, index=df.index)
    first = df[~gid.duplicated()].copy()
    first_gid = gid[first.index].to_numpy()
    first["n_repeats"] = gid.value_counts().reindex(first_gid).to_numpy()
    for m in metrics:
        stats = pd.Series(_num(df[m]), index=df.index).groupby(gid).agg(["mean", "std", "count"])
        stats = stats.reindex(first_gid)
        count = stats["count"].to_numpy()
        t = np.array([t_quantile_975(int(c) - 1) if c >= 2 else np.nan for c in count])
        half = t * stats["std"].to_numpy() / np.sqrt(np.maximum(count, 1))
        mean = stats["mean"].to_numpy()
        # A metric measured once keeps the interval its row carries (a task's own score CI).
        own_lo = _num(first[f"{m}_ci_low"]) if f"{m}_ci_low" in first else np.full(len(first), np.nan)
        own_hi = _num(first[f"{m}_ci_high"]) if f"{m}_ci_high" in first else np.full(len(first), np.nan)
        single = count == 1
        first[m] = mean
        first[f"{m}_ci_low"] = np.where(single, own_lo, mean - half)
        first[f"{m}_ci_high"] = np.where(single, own_hi, mean + half)
    return first


def _num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


# ----------------------------------------------------------------------------------------------
# Points: one row per configuration with the chosen metrics side by side
# ----------------------------------------------------------------------------------------------


def metric_points(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per configuration (POINT_KEYS) of ok cells, with a column per metric key.

    Plain metrics come from the latency rows, "score:<task>" from that task's rows; both are
    averaged over repeats (with `<key>_ci_low/high`) and joined on POINT_KEYS. A configuration that
    lacks a metric keeps NaN there, so callers can report it instead of silently dropping it.
    Provenance columns come from the first key's rows.
    """
    keys = list(dict.fromkeys(keys))
    if not keys:
        raise ValueError("metric_points needs at least one metric key")
    columns = [m for k in keys for m in (["score"] if is_score_key(k) else [k])]
    ok = slim(df[df["status"] == "ok"], columns)
    # Group keys by the rows they are measured on, so metrics of the same rows stay one frame.
    by_rows: dict[str | None, list[str]] = {}
    for key in keys:
        by_rows.setdefault(task_of(key), []).append(key)
    merged: pd.DataFrame | None = None
    for task, group in by_rows.items():
        rows = rows_for(ok, group[0])
        columns = ["score" if task is not None else k for k in group]
        agg = aggregate_repeats(rows, columns)
        if task is not None:
            key = group[0]
            agg = agg.rename(
                columns={"score": key, "score_ci_low": f"{key}_ci_low", "score_ci_high": f"{key}_ci_high"}
            )
        value_cols = [c for k in group for c in (k, f"{k}_ci_low", f"{k}_ci_high")]
        if merged is None:
            # Scores are only meaningful per task, as "score:<task>" columns: drop the raw ones.
            raw_score = [c for c in ("score", "score_ci_low", "score_ci_high") if c not in value_cols]
            merged = agg.drop(columns=raw_score, errors="ignore")
        else:
            merged = merged.merge(agg[[*POINT_KEYS, *value_cols]], on=list(POINT_KEYS), how="outer")
    assert merged is not None
    return merged.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Pareto front
# ----------------------------------------------------------------------------------------------


def _groups(df: pd.DataFrame, group_by: Sequence[str]):
    if not group_by:
        if not df.empty:
            yield None, df
        return
    yield from df.groupby(list(group_by), dropna=False, sort=True)


def incomplete_rows(df: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """Rows lacking a value for some objective, with a `missing` column naming which ones."""
    objectives = list(objectives)
    na = df[objectives].isna().to_numpy()
    mask = na.any(axis=1)
    out = df[mask].copy()
    out["missing"] = [", ".join(c for c, gone in zip(objectives, r, strict=True) if gone) for r in na[mask]]
    return out


def pareto_front(
    df: pd.DataFrame,
    minimize: Sequence[str] = (),
    maximize: Sequence[str] = (),
    group_by: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into the Pareto front and the dominated rows, within each `group_by` group.

    A row dominates another when it is no worse on every objective and better on one, so equal
    points dominate neither other and are both on the front. Rows missing an objective are in
    neither frame (see incomplete_rows). The dominated frame gets `dominated_by`: the index of the
    front row of its group that dominates it and is best on the first objective (e.g. the cheapest
    cell that beats it), and `dominated_by_all`: every such front index. The front is sorted by
    group, then first objective, so it can be drawn as a step line.
    """
    minimize, maximize = list(minimize), list(maximize)
    objectives = minimize + maximize
    if not objectives:
        raise ValueError("pareto_front needs at least one objective")
    if not df.index.is_unique:
        raise ValueError("pareto_front needs a unique index: dominated_by refers to it")
    complete = df.dropna(subset=objectives)
    front_index: list = []
    dominated_index: list = []
    dominated_by: list = []
    dominated_by_all: list = []
    for _, g in _groups(complete, group_by):
        # Negate maximized objectives so "smaller is better" holds for every column.
        cost = np.column_stack([_num(g[c]) for c in minimize] + [-_num(g[c]) for c in maximize])
        no_worse = (cost[:, None, :] <= cost[None, :, :]).all(axis=2)
        better = (cost[:, None, :] < cost[None, :, :]).any(axis=2)
        dominates = no_worse & better  # dominates[i, j]: row i dominates row j
        on_front = ~dominates.any(axis=0)
        order = np.lexsort(cost.T[::-1])  # by first objective, ties by the next ones
        front_pos = [i for i in order if on_front[i]]
        front_index += [g.index[i] for i in front_pos]
        for j in order:
            if on_front[j]:
                continue
            beaters = [g.index[i] for i in front_pos if dominates[i, j]]
            dominated_index.append(g.index[j])
            dominated_by.append(beaters[0])
            dominated_by_all.append(tuple(beaters))
    front = complete.loc[front_index].copy()
    dominated = complete.loc[dominated_index].copy()
    dominated["dominated_by"] = pd.Series(dominated_by, index=dominated.index, dtype=object)
    dominated["dominated_by_all"] = pd.Series(dominated_by_all, index=dominated.index, dtype=object)
    return front, dominated


def best_under_budget(
    df: pd.DataFrame,
    metric: str,
    budget_col: str,
    budget: float,
    *,
    higher_is_better: bool | None = None,
    group_by: Sequence[str] = (),
) -> pd.DataFrame:
    """Rows with the best `metric` among those with `budget_col` <= `budget`, per group (ties kept).

    The direction defaults to the metric's own (e.g. accuracy up, TTFT down).
    """
    if higher_is_better is None:
        higher_is_better = metric_info(metric).higher_is_better
    fits = df[(_num(df[budget_col]) <= budget) & df[metric].notna()]
    best = []
    for _, g in _groups(fits, group_by):
        values = _num(g[metric])
        target = values.max() if higher_is_better else values.min()
        best.append(g[values == target])
    return pd.concat(best) if best else fits.iloc[0:0]


# ----------------------------------------------------------------------------------------------
# Views: what one dashboard page or report figure needs, computed without any UI
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """A ceiling on one metric, in its raw unit (bytes, seconds)."""

    column: str
    limit: float


@dataclass(frozen=True)
class ParetoView:
    x: str
    y: str
    front: pd.DataFrame  # sorted per context_len, then x: ready for a step line
    dominated: pd.DataFrame  # with dominated_by (an index of `front`)
    incomplete: pd.DataFrame  # configurations lacking x or y, with `missing`
    best: pd.DataFrame  # best under the budget, per context (empty without a budget)
    budget: Budget | None
    best_by: str | None  # the metric `best` is judged on
    chance_accuracy: bool  # an accuracy axis shows a random-weight model: chance level

    @property
    def contexts(self) -> list[int]:
        both = pd.concat([self.front["context_len"], self.dominated["context_len"]])
        return sorted(int(c) for c in both.dropna().unique())


def pareto_view(
    df: pd.DataFrame,
    x: str,
    y: str,
    *,
    contexts: Sequence[int] | None = None,
    budget: Budget | None = None,
) -> ParetoView:
    """Pareto front of x against y, one front per context length, with the best under a budget.

    The budget's best is judged on y (on x when the budget is on y itself).
    """
    keys = [x, y] + ([budget.column] if budget else [])
    points = metric_points(df, keys)
    if contexts is not None:
        points = points[points["context_len"].isin(list(contexts))]
    objectives = {x: metric_info(x), y: metric_info(y)}
    minimize = [k for k, m in objectives.items() if not m.higher_is_better]
    maximize = [k for k, m in objectives.items() if m.higher_is_better]
    front, dominated = pareto_front(points, minimize, maximize, group_by=["context_len"])
    best, best_by = points.iloc[0:0], None
    if budget is not None:
        best_by = x if budget.column == y else y
        complete = pd.concat([front, dominated])
        best = best_under_budget(complete, best_by, budget.column, budget.limit, group_by=["context_len"])
    accuracy_axis = [k for k in (x, y) if is_score_key(k)]
    chance = bool(accuracy_axis) and chance_accuracy(df[df["task"].isin([task_of(k) for k in accuracy_axis])])
    return ParetoView(
        x=x,
        y=y,
        front=front,
        dominated=dominated,
        incomplete=incomplete_rows(points, [x, y]),
        best=best,
        budget=budget,
        best_by=best_by,
        chance_accuracy=chance,
    )


FAILED = tuple(s for s in STATUSES if s != "ok")


@dataclass(frozen=True)
class ScalingView:
    key: str
    measured: pd.DataFrame  # one row per configuration: key, key_ci_low/high, series, context_len
    estimate: pd.DataFrame  # series, context_len, estimate (empty when the metric has none)
    failures: pd.DataFrame  # every non-ok cell: series, context_len, status, status_detail
    chance_accuracy: bool


def scaling_view(df: pd.DataFrame, key: str) -> ScalingView:
    """A metric against context length per series, its analytic estimate, and where cells failed."""
    rows = slim(rows_for(df, key), ["score" if is_score_key(key) else key])
    qualify = varying(rows)
    measured = metric_points(df, [key])
    measured = measured[measured[key].notna()].copy()
    measured["series"] = series_names(measured, qualify)
    est_col = ESTIMATE_OF.get(key)
    estimate = pd.DataFrame(columns=["series", "context_len", "estimate"])
    if est_col is not None:
        # The estimate is analytic, so failed cells' estimates count too: they show where an OOM
        # was expected.
        with_est = rows[rows[est_col].notna()].assign(series=series_names(rows, qualify))
        if not with_est.empty:
            estimate = (
                with_est.groupby(["series", "context_len"], as_index=False)[est_col]
                .mean()
                .rename(columns={est_col: "estimate"})
            )
    failures = rows[rows["status"].isin(FAILED)].assign(series=series_names(rows, qualify))
    chance = is_score_key(key) and chance_accuracy(rows)
    return ScalingView(key, measured, estimate, failures, chance)


# ----------------------------------------------------------------------------------------------
# Comparing two runs
# ----------------------------------------------------------------------------------------------

COMPARE_KEYS: tuple[str, ...] = (
    "suite",
    "method",
    "label",
    "params",
    "model",
    "dtype",
    "context_len",
    "decode_tokens",
    "task",
)


def _collapse(df: pd.DataFrame, keys: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    grouped = df.groupby(keys, dropna=False, sort=True)
    out = grouped[list(metrics)].mean(numeric_only=False)
    out["n"] = grouped.size()
    if "status" in df.columns:
        out["status"] = grouped["status"].agg(lambda s: "/".join(sorted(set(s.dropna()))))
    return out.reset_index()


def compare_runs(
    df_a: pd.DataFrame,
    df_b: pd.DataFrame,
    keys: Sequence[str] = COMPARE_KEYS,
    metrics: Sequence[str] = ("peak_prefill_mem_bytes", "kv_cache_bytes", "ttft_s", "decode_ms_p50", "score"),
) -> pd.DataFrame:
    """Run A beside run B, one row per key: `<m>_a`, `<m>_b` and `<m>_ratio` = B / A.

    Repeats are averaged (`n_a`, `n_b` count them); `status_a/_b` list the statuses seen; `present`
    says whether the configuration is in both runs or only one. A ratio is NaN where A is 0 or
    either side is missing, never inf.
    """
    keys = list(keys)
    metrics = list(metrics)
    a = _collapse(df_a, keys, metrics)
    b = _collapse(df_b, keys, metrics)
    out = a.merge(b, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    out["present"] = out.pop("_merge").map({"both": "both", "left_only": "only A", "right_only": "only B"})
    out["present"] = out["present"].astype("str")
    for m in metrics:
        va, vb = _num(out[f"{m}_a"]), _num(out[f"{m}_b"])
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"{m}_ratio"] = np.where(va != 0, vb / va, np.nan)
    return out
