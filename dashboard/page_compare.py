"""Compare runs page: two runs side by side, with B / A ratios."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from segbench.dashboard.common import chance_warning, run_order

from segbench import analysis as an
from segbench import runs
from segbench.figures import ratio_figure

COMPARED = (
    "peak_prefill_mem_bytes",
    "kv_cache_bytes",
    "ttft_s",
    "decode_ms_p50",
    "decode_tokens_per_s",
    "score",
)


def _with_data(df: pd.DataFrame) -> list[str]:
    return [m for m in COMPARED if df[m].notna().any()]


def display_table(compared: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The comparison with every value in the unit its header names (MiB or GiB as the data needs,
    accuracy x100); ratios are unit-free."""
    out = compared[["method", "label", "context_len", "task", "present", "status_a", "status_b"]].copy()
    for m in metrics:
        unit = an.display_unit(m, pd.concat([compared[f"{m}_a"], compared[f"{m}_b"]]))
        name = an.metric_info(m).label
        for side in ("a", "b"):
            values = pd.to_numeric(compared[f"{m}_{side}"], errors="coerce")
            out[f"{name} {side.upper()} ({unit})"] = an.to_display(values, m, unit)
        out[f"{name} B / A"] = compared[f"{m}_ratio"]
    return out


def render(df: pd.DataFrame) -> None:
    st.header("Compare runs")
    order = run_order(df)  # oldest first
    pair = runs.newest_pair(order)
    if pair is None:
        st.info(
            "Comparing needs two runs: `segbench dashboard RUN_A RUN_B`, "
            "or one parent directory holding both."
        )
        return
    newest_first = order[::-1]
    c1, c2 = st.columns(2)
    # Defaults: B is the newest run and A the one before it, so B / A answers "did the latest run
    # get cheaper or faster?" without picking anything.
    with c1:
        a = st.selectbox("Run A (baseline)", newest_first, index=newest_first.index(pair[0]), key="compare_a")
    with c2:
        b = st.selectbox("Run B", newest_first, index=newest_first.index(pair[1]), key="compare_b")
    if a == b:
        st.warning("Pick two different runs.")
        return
    st.caption(
        "Preselected: B the newest run, A the one before it (runs ordered by their first cell's start)."
    )
    run_a, run_b = df[df["run"] == a], df[df["run"] == b]
    present = _with_data(pd.concat([run_a, run_b]))
    metrics = st.multiselect(
        "Metrics", list(COMPARED), default=present, format_func=an.picker_label, key="compare_metrics"
    )
    if not metrics:
        return
    if "score" in metrics:
        chance_warning(pd.concat([run_a, run_b]))
    compared = an.compare_runs(run_a, run_b, metrics=metrics)
    st.dataframe(display_table(compared, metrics), hide_index=True)
    st.caption("B / A averaged over repeats; empty where either run lacks the value or A is 0.")
    plottable = [m for m in metrics if compared[f"{m}_ratio"].notna().any()] or metrics
    key = st.selectbox("Plot the ratio of", plottable, format_func=an.picker_label, key="compare_plot_metric")
    st.plotly_chart(ratio_figure(compared, key, "A", "B"), key="compare_chart")
