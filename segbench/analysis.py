"""The data layer behind the dashboard and the HTML report: pure functions, pandas in, pandas out.

Nothing here imports a UI package, so `segbench report` can use it on a bare GPU image. Metric
names and units live in segbench.metrics, reading results in segbench.loading; both are re-exported
here, so callers keep one name (`from segbench import analysis as an`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segbench import runs
from segbench.loading import (  # noqa: F401 - re-exported: analysis is the data layer's one name
    CELLS_DIR,
    LOAD_NOTES,
    RESULTS_PARQUET,
    conform,
    empty_results,
    find_suite_dirs,
    load_results,
)
from segbench.metrics import (  # noqa: F401 - re-exported: analysis is the data layer's one name
    ESTIMATE_OF,
    GIB,
    METRICS,
    MIB,
    PARETO_AXES,
    SCORE_PREFIX,
    SCORE_UNIT,
    Metric,
    axis_title,
    display_unit,
    format_bytes,
    format_tokens,
    format_value,
    from_display,
    is_missing,
    is_score_key,
    metric_info,
    picker_label,
    score_key,
    task_of,
    to_display,
)
from segbench.schema import STATUSES

# ----------------------------------------------------------------------------------------------
# Row selection
# ----------------------------------------------------------------------------------------------

# What identifies a measured point across repeats (and across the latency and accuracy rows of
# the same configuration, which differ in task and decode length).
POINT_KEYS: tuple[str, ...] = (
    "source",
    "run",  # one per source; carried so every point and series knows its run's label
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
    extra = [
        c for m in metrics for c in (m, f"{m}_ci_low", f"{m}_ci_high", ESTIMATE_OF.get(m), ALL_OF.get(m))
    ]
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


# A run is qualified by its label (directory + start + commit), not the directory's basename: two
# runs of one suite share that basename.
QUALIFIERS: tuple[str, ...] = ("model", runs.RUN)


def varying(df: pd.DataFrame, columns: Sequence[str] = QUALIFIERS) -> list[str]:
    """The columns among `columns` that take more than one value in `df`."""
    return [c for c in columns if c in df.columns and df[c].nunique(dropna=False) > 1]


def series_names(df: pd.DataFrame, qualify: Sequence[str] | None = None) -> pd.Series:
    """One legend name per row: the label, qualified by model and run where those vary.

    Pass `qualify` (from varying() on the whole data) to name subsets consistently.
    """
    names = df["label"].fillna(df["method"]).fillna("?").astype(str)
    for col in varying(df) if qualify is None else qualify:
        text = df[col].fillna("?").astype(str)
        if col == "source":
            text = text.map(lambda s: Path(s).name or s)
        names = names + " · " + text
    return names


def with_series(subset: pd.DataFrame, qualify: Sequence[str]) -> pd.DataFrame:
    """`subset` with its series names, computed from itself (never from a longer frame)."""
    out = subset.copy()
    out["series"] = series_names(subset, qualify) if not subset.empty else pd.Series([], dtype="str")
    return out


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


INTERVAL_SUFFIXES = ("_ci_low", "_ci_high", "_interval")
# A metric whose row also keeps every in-process timing it summarises (ttft_s is their median).
ALL_OF: dict[str, str] = {"ttft_s": "ttft_s_all"}
# What `<metric>_interval` says the error bar of a point is.
INTERVAL_CI95 = "95% t-interval over process repeats"
INTERVAL_OWN = "the task's own 95% interval"
INTERVAL_RANGE = "min–max of the timings inside one process"


def _list_range(value) -> tuple[float, float]:
    """(min, max) of a JSON list of numbers (as the loader stores JSON columns), NaNs if none."""
    if is_missing(value):
        return math.nan, math.nan
    try:
        items = json.loads(value) if isinstance(value, str) else list(value)
        v = np.asarray([float(x) for x in items if x is not None], dtype=float)
    except (TypeError, ValueError, json.JSONDecodeError):
        return math.nan, math.nan
    v = v[np.isfinite(v)]
    return (float(v.min()), float(v.max())) if len(v) else (math.nan, math.nan)


def aggregate_repeats(
    df: pd.DataFrame, metrics: Sequence[str], keys: Sequence[str] = REPEAT_KEYS
) -> pd.DataFrame:
    """One row per repeat group: each metric's mean with `<metric>_ci_low/_ci_high` (95% t-interval).

    Other columns are those of the group's first row (its provenance, for hover). A metric measured
    once keeps the interval its row already carries (a task's score CI); a timing measured in one
    process gets the min–max of that process's own timings (ALL_OF: ttft_s from ttft_s_all), which
    is a spread, not a confidence interval. `<metric>_interval` says which (INTERVAL_*), "" for none.
    `n_repeats` counts the rows merged. The index is the first row's index.
    """
    keys = [k for k in keys if k in df.columns]
    if df.empty:
        out = df.copy()
        for m in metrics:
            out[f"{m}_ci_low"] = pd.Series(dtype=float)
            out[f"{m}_ci_high"] = pd.Series(dtype=float)
            out[f"{m}_interval"] = pd.Series(dtype="str")
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
        kind = np.where(single & ~np.isnan(own_lo), INTERVAL_OWN, np.where(count >= 2, INTERVAL_CI95, ""))
        all_col = ALL_OF.get(m)
        if all_col in df.columns:
            # One process: no repeat spread exists, so show the spread of its own timings instead,
            # and say so, rather than a bare point that makes a 1 ms gap look decisive.
            ranges = np.array([_list_range(v) for v in df[all_col]], dtype=float).reshape(-1, 2)
            lo_all = pd.Series(ranges[:, 0], index=df.index).groupby(gid).min().reindex(first_gid).to_numpy()
            hi_all = pd.Series(ranges[:, 1], index=df.index).groupby(gid).max().reindex(first_gid).to_numpy()
            use = single & np.isnan(own_lo) & ~np.isnan(lo_all) & (hi_all > lo_all)
            own_lo = np.where(use, lo_all, own_lo)
            own_hi = np.where(use, hi_all, own_hi)
            kind = np.where(use, INTERVAL_RANGE, kind)
        first[m] = mean
        first[f"{m}_ci_low"] = np.where(single, own_lo, mean - half)
        first[f"{m}_ci_high"] = np.where(single, own_hi, mean + half)
        first[f"{m}_interval"] = pd.Series(kind, index=first.index, dtype="str")
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
            agg = agg.rename(columns={f"score{s}": f"{key}{s}" for s in ("", *INTERVAL_SUFFIXES)})
        value_cols = [f"{k}{s}" for k in group for s in ("", *INTERVAL_SUFFIXES)]
        if merged is None:
            # Scores are only meaningful per task, as "score:<task>" columns: drop the raw ones.
            raw_score = [f"score{s}" for s in ("", *INTERVAL_SUFFIXES) if f"score{s}" not in value_cols]
            merged = agg.drop(columns=raw_score, errors="ignore")
        else:
            on = [k for k in POINT_KEYS if k in agg.columns]  # `run` only in loaded frames
            merged = merged.merge(agg[[*on, *value_cols]], on=on, how="outer")
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


FAILED = tuple(s for s in STATUSES if s != "ok")
NOT_OK_COLUMNS = ("context_len", "series", "method", "label", "status", "status_detail", "cells",
                  "ok_too", "config_hash", "source", "run")  # fmt: skip


def not_ok_configs(
    df: pd.DataFrame, keys: Sequence[str], *, contexts: Sequence[int] | None = None
) -> pd.DataFrame:
    """Configurations whose cells for these metric keys did not finish ok, one row per status.

    For choosing a method under a budget, "it ran out of memory at 32K" is the key fact, so a page
    that only draws ok cells must list these. `cells` counts the cells (repeats, tasks), `ok_too`
    says whether another repeat of the same configuration did finish ok (so it is also plotted),
    `status_detail` is the first cell's. Series are named as the plot names them.
    """
    parts = [rows_for(df, k) for k in dict.fromkeys(keys)]
    rows = pd.concat(parts) if parts else df.iloc[0:0]
    rows = rows[~rows.index.duplicated()]
    if contexts is not None:
        rows = rows[rows["context_len"].isin(list(contexts))]
    bad = rows[rows["status"].isin(FAILED) | rows["status"].isna()]
    if bad.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in NOT_OK_COLUMNS})
    bad = with_series(bad, varying(df)).assign(status=bad["status"].fillna("(missing)"))
    keys_ = [k for k in POINT_KEYS if k in bad.columns]
    ok_configs = rows.loc[rows["status"] == "ok", keys_].drop_duplicates()
    grouped = bad.groupby([*keys_, "status"], dropna=False, sort=True)
    out = grouped.first().reset_index()
    out["cells"] = grouped.size().to_numpy()
    flag = out[keys_].merge(ok_configs.assign(ok_too=True), on=keys_, how="left")["ok_too"]
    out["ok_too"] = flag.fillna(False).astype(bool).to_numpy()
    out = out.sort_values(["context_len", "series", "status"], kind="stable").reset_index(drop=True)
    return out.reindex(columns=list(NOT_OK_COLUMNS))


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
    failed: pd.DataFrame  # configurations that did not finish ok at these contexts (not_ok_configs)

    @property
    def contexts(self) -> list[int]:
        """Every context with a point or a failure: a context where all failed still gets a panel."""
        parts = [self.front["context_len"], self.dominated["context_len"], self.failed["context_len"]]
        return sorted(int(c) for c in pd.concat(parts).dropna().unique())


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
    failed = not_ok_configs(df, [x, y], contexts=contexts)
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
        failed=failed,
    )


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
        # was expected. Names are computed on the subset itself: assigning a full-length Series to
        # an empty frame makes pandas (3.x) adopt its index, i.e. rows of None.
        with_est = with_series(rows[rows[est_col].notna()], qualify)
        if not with_est.empty:
            estimate = (
                with_est.groupby(["series", "context_len"], as_index=False)[est_col]
                .mean()
                .rename(columns={est_col: "estimate"})
            )
    failures = with_series(rows[rows["status"].isin(FAILED)], qualify)
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
