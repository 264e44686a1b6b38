"""The Timeline figure: memory against time from prefill start, one line per method.

Drawn from a segbench.timeline.TimelineView with the shared helpers of segbench.figures; plotly
is imported inside the builder only, as there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from segbench import analysis as an
from segbench.figures import FRONT_COLOR, _empty, _esc, _records, _values, color_map, escape, require_plotly

if TYPE_CHECKING:  # for annotations only: no runtime import of plotly or the view here
    import plotly.graph_objects as go

    from segbench.timeline import TimelineView


def timeline_figure(view: TimelineView, *, over_weights: bool = False, show_nvml: bool = False) -> go.Figure:
    """Memory against time from prefill start, one line per series, its peak marked.

    `view` is a segbench.timeline.TimelineView. Traces carry `meta.role`: "timeline" (a line),
    "peak" (the highest sample), "ttft" (where the first token came), "nvml" (device used memory,
    when asked). Memory is in the unit the tables use (MiB below 1 GiB); `over_weights` subtracts
    each cell's weights so what prefill adds is compared directly.
    """
    go, _ = require_plotly()
    lines, summary = view.lines, view.summary
    if summary.empty:
        return _empty(f"No memory trace at {an.format_tokens(view.context_len)} tokens.")
    weights = summary.set_index("series")["weights_bytes"].fillna(0).astype(float)
    shift = lines["series"].map(weights).fillna(0.0) if over_weights else 0.0
    y_raw = lines["bytes"] - shift
    key = "peak_prefill_over_weights_bytes" if over_weights else "peak_prefill_mem_bytes"
    unit = an.display_unit(key, y_raw)
    colors = color_map(summary["series"].tolist())
    traces = []
    for row in _records(summary, list(summary.columns)):
        name = row["series"]
        g = lines[lines["series"] == name]
        w = weights[name] if over_weights else 0.0
        color = colors[name]
        traces.append(
            go.Scatter(
                x=_values(g["t_s"]),
                y=_values(an.to_display(g["bytes"] - w, key, unit)),
                mode="lines",
                line=dict(color=color, width=2, shape="hv"),  # a sample holds until the next
                name=name,
                legendgroup=name,
                hovertemplate=f"{escape(name)}<br>%{{x:.3f}} s: %{{y:.4g}} {unit}<extra></extra>",
                meta={"role": "timeline", "series": name},
            )
        )
        peak_text = (
            f"<b>{_esc(name)}</b> peak {an.format_bytes(row['peak_bytes'] - w)} at {row['t_peak_s']:.3f} s"
            f"<br>{_esc(row['status'])} · {int(row['samples'])} samples ({_esc(row['source_kind'])})"
            f"<br>cell {_esc(row['config_hash'], 16)}"
        )
        traces.append(
            go.Scatter(
                x=[row["t_peak_s"]],
                y=_values(an.to_display(pd.Series([row["peak_bytes"] - w]), key, unit)),
                mode="markers",
                marker=dict(
                    color=color, size=11, symbol="triangle-down", line=dict(color=FRONT_COLOR, width=1)
                ),
                name=f"{name} peak",
                legendgroup=name,
                showlegend=False,
                hovertext=[peak_text],
                hovertemplate="%{hovertext}<extra></extra>",
                meta={"role": "peak", "series": name},
            )
        )
        ttft = row["ttft_s"]
        if ttft is not None and not pd.isna(ttft) and len(g):
            # The line's value when the first token came (the last sample at or before it).
            before = g[g["t_s"] <= ttft]
            at = (before if len(before) else g).iloc[-1]["bytes"] - w
            traces.append(
                go.Scatter(
                    x=[float(ttft)],
                    y=_values(an.to_display(pd.Series([at]), key, unit)),
                    mode="markers",
                    marker=dict(color="white", size=9, symbol="circle", line=dict(color=color, width=2)),
                    name=f"{name} first token",
                    legendgroup=name,
                    showlegend=False,
                    hovertemplate=f"{escape(name)}: first token at %{{x:.3f}} s<extra></extra>",
                    meta={"role": "ttft", "series": name},
                )
            )
        if show_nvml and g["nvml_used_bytes"].notna().any():
            traces.append(
                go.Scatter(
                    x=_values(g["t_s"]),
                    y=_values(an.to_display(g["nvml_used_bytes"], key, unit)),
                    mode="lines",
                    line=dict(color=color, width=1, dash="dot"),
                    name=f"{name} (NVML used)",
                    legendgroup=name,
                    meta={"role": "nvml", "series": name},
                )
            )
    fig = go.Figure(traces)
    shapes = []
    if not over_weights and view.weights_bytes:
        at = an.to_display(view.weights_bytes, key, unit)
        shapes.append(
            dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=at, y1=at,
                 line=dict(color="#888888", width=1, dash="dot"))
        )  # fmt: skip
        fig.add_annotation(
            text="weights", xref="paper", x=1.0, xanchor="right", yref="y", y=at, yanchor="bottom",
            showarrow=False, font=dict(color="#888888", size=11),
        )  # fmt: skip
    what = "Memory minus weights" if over_weights else "Memory"
    fig.update_layout(
        title=f"{what} during prefill at {an.format_tokens(view.context_len)} tokens (▼ peak, ○ first token)",
        xaxis_title="Time from prefill start (s)",
        yaxis_title=f"{what} ({unit})",
        shapes=shapes,
        height=520,
        legend=dict(groupclick="togglegroup"),
    )
    return fig
