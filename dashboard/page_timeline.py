"""Timeline page: memory during prefill over time, the methods overlaid at one context length, so a
user sees where each method's peak happens (full climbing layer by layer, segmented staying flat)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from segbench import analysis as an
from segbench import timeline as tl
from segbench.timeline_figure import timeline_figure

SOURCE_NAMES = {"cpu_rss": "process RSS (CPU)", "cuda_allocated": "torch allocated memory (GPU)"}


def render(df: pd.DataFrame) -> None:
    st.header("Timeline: memory during prefill")
    contexts = tl.contexts_with_traces(df)
    if not contexts:
        st.info(
            "No memory traces in these results. A cell records one when the worker samples memory "
            f"during prefill: `<suite dir>/{tl.TRACES_DIR}/<config_hash>.json`. Re-run the suite with "
            "a segbench that records traces."
        )
        return
    c1, c2, c3 = st.columns([2, 1, 1])
    with c1:
        # The longest context by default: where methods differ most.
        ctx = st.selectbox(
            "Context length",
            contexts,
            index=len(contexts) - 1,
            format_func=an.format_tokens,
            key="timeline_ctx",
        )
    with c2:
        over = st.checkbox("minus weights", key="timeline_over_weights")
    view = tl.timeline_view(df, ctx)
    has_nvml = view.lines["nvml_used_bytes"].notna().any()
    with c3:
        nvml = st.checkbox("NVML used", key="timeline_nvml", disabled=not has_nvml)
    for note in view.notes:
        st.warning(f"Trace skipped: {note}")
    kinds = tl.trace_sources(view)
    if len(kinds) > 1:
        st.warning(
            "These traces measure different things ("
            + ", ".join(SOURCE_NAMES.get(k, k) for k in kinds)
            + "): compare shapes, not levels."
        )
    st.plotly_chart(timeline_figure(view, over_weights=over, show_nvml=nvml), key="timeline_chart")
    what = ", ".join(SOURCE_NAMES.get(k, k) for k in kinds) or "memory"
    st.caption(
        f"Sampled {what} from prefill start, one cell per method (its first repeat with a trace); "
        "same basis as the tables' peak prefill memory, weights included unless subtracted. "
        "▼ the highest sample, ○ the first token. A peak between two samples is missed, so a "
        "trace's maximum can sit slightly below the row's measured peak."
    )
    summary = view.summary.assign(
        peak=view.summary["peak_bytes"].map(an.format_bytes),
        row_peak=view.summary["row_peak_bytes"].map(an.format_bytes),
        peak_at=view.summary["t_peak_s"].map(lambda t: f"{t:.3f} s"),
        ttft=view.summary["ttft_s"].map(lambda t: "–" if pd.isna(t) else f"{t:.3f} s"),
    )
    st.dataframe(
        summary[
            [
                "series",
                "status",
                "peak",
                "peak_at",
                "ttft",
                "row_peak",
                "samples",
                "source_kind",
                "config_hash",
            ]
        ],
        hide_index=True,
    )
    if not view.untraced.empty:
        st.caption(
            "No trace at this context for: "
            + ", ".join(f"{r.series} ({r.status})" for r in view.untraced.itertuples())
        )
