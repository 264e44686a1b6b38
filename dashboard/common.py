"""What every dashboard page shares: cached loading, the sidebar filters, the chance warning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import streamlit as st

from segbench import analysis as an
from segbench import runs
from segbench.figures import CHANCE_WARNING
from segbench.timeline import TRACES_DIR


def fingerprint(dirs: Sequence[str]) -> tuple:
    """Changes whenever a result file appears or changes, so a rerun shows new cells."""
    parts = []
    for d in dirs:
        for suite in an.find_suite_dirs(d):
            files = [
                suite / an.RESULTS_PARQUET,
                *sorted((suite / an.CELLS_DIR).glob("*.json")),
                *sorted((suite / TRACES_DIR).glob("*.json")),
            ]
            stats = [(f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()]
            parts.append((str(suite), hash(tuple(stats))))
    return tuple(parts)


@st.cache_data(show_spinner="Loading results…", max_entries=4)
def _load(dirs: tuple[str, ...], fingerprint: tuple) -> tuple[pd.DataFrame, list[str]]:
    # `fingerprint` is only part of the cache key: new or changed files mean a fresh load.
    df = an.load_results([Path(d) for d in dirs])
    return df, list(df.attrs.get(an.LOAD_NOTES, []))


def load(dirs: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    return _load(tuple(dirs), fingerprint(dirs))


def _pick(
    label: str, df: pd.DataFrame, column: str, key: str, options: list[str] | None = None
) -> pd.DataFrame:
    if options is None:
        options = sorted(df[column].dropna().astype(str).unique().tolist())
    if len(options) <= 1:
        return df
    chosen = st.multiselect(label, options, default=options, key=key)
    return df[df[column].astype(str).isin(chosen)]


def run_order(df: pd.DataFrame) -> list[str]:
    """Run labels, oldest first (by their earliest started_at)."""
    return runs.run_table(df)[runs.RUN].tolist()


def sidebar_filters(df: pd.DataFrame) -> pd.DataFrame:
    """Narrow every page to some runs, models and methods: fronts across GPUs mean little."""
    df = _pick("Runs (directory · start · commit)", df, runs.RUN, "filter_source", run_order(df))
    df = _pick("Models", df, "model", "filter_model")
    df = _pick("Methods", df, "method", "filter_method")
    return df


def chance_warning(df: pd.DataFrame) -> None:
    """Wherever accuracy is shown: a random-weight model scores chance, whatever the method."""
    if an.chance_accuracy(df):
        st.warning(f"⚠ {CHANCE_WARNING} (model_trained is false for some accuracy rows).")


# Timings vary from process to process; memory and accuracy of one configuration barely do.
TIMED_UNITS = ("s", "ms", "tok/s")


def single_process_note(points: pd.DataFrame, keys: list[str]) -> None:
    """Say what the error bars are when no configuration was repeated in a fresh process.

    With one process per cell there is no run-to-run spread to show; a bare point would present a
    1 ms TTFT gap as decisive. The bars then span the process's own timings, which is said here.
    """
    timed = [k for k in keys if an.metric_info(k).unit in TIMED_UNITS]
    if not timed or points.empty or "n_repeats" not in points or (points["n_repeats"] > 1).any():
        return
    ranged = [
        k for k in timed if (points.get(f"{k}_interval", pd.Series(dtype=str)) == an.INTERVAL_RANGE).any()
    ]
    bars = (
        f"The {', '.join(an.metric_info(k).label for k in ranged)} bars are the min–max of the timed "
        "runs inside that one process, not a confidence interval. Differences smaller than the bars, "
        "or than process-to-process variation (not measured here), are not decisive"
        if ranged
        else "There is no spread to show, so a small difference in time is not decisive"
    )
    st.info(
        f"Each configuration ran in one process (workload.process_repeats = 1). {bars}: set "
        "`process_repeats: 3` in the suite for 95% intervals."
    )


def metric_select(label: str, options: list[str], default: str | None, key: str) -> str:
    index = options.index(default) if default in options else 0
    return st.selectbox(label, options, index=index, format_func=an.picker_label, key=key)
