"""Scaling page: one metric against context length per method, failures where they happened."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from segbench.dashboard.common import single_process_note

from segbench import analysis as an
from segbench.figures import CHANCE_WARNING, STATUS_STYLE, scaling_figure

SCALING_METRICS = (*an.PARETO_AXES, "decode_ms_p90")


def render(df: pd.DataFrame) -> None:
    st.header("Scaling: each metric against context length")
    metrics = an.available_metrics(df, SCALING_METRICS)
    if not metrics:
        st.info("No ok cell measured anything yet. The Cells page lists what failed and why.")
        return
    c1, c2 = st.columns([3, 1])
    with c1:
        key = st.selectbox("Metric", metrics, format_func=an.picker_label, key="scaling_metric")
    with c2:
        log_y = st.checkbox("log y", value=an.metric_info(key).unit == "bytes", key="scaling_log_y")
    view = an.scaling_view(df, key)
    if view.chance_accuracy:
        st.warning(f"⚠ {CHANCE_WARNING}.")
    st.plotly_chart(scaling_figure(view, log_y=log_y), key="scaling_chart")
    legend = ", ".join(f"{name} ({symbol})" for name, symbol, _ in STATUS_STYLE.values())
    strip = (
        f"Lower strip: cells that did not finish ok, at the context where they stopped: {legend}."
        if not view.failures.empty
        else "Every cell for this metric finished ok."
    )
    dashed = (
        "Dashed: the method's analytic estimate (drawn for failed cells too). "
        if not view.estimate.empty
        else ""
    )
    st.caption(f"x is log2. {dashed}{strip}")
    single_process_note(view.measured, [key])
    if not view.failures.empty:
        with st.expander(f"{len(view.failures)} cell(s) not ok"):
            cols = ["context_len", "series", "status", "status_detail", "repeat_group", "config_hash"]
            st.dataframe(view.failures[cols].sort_values(["series", "context_len"]), hide_index=True)
