"""Plotly figure builders shared by the dashboard pages and the HTML report.

The numbers come from segbench.analysis views; this module only draws them. plotly is imported
inside each builder, never at module import, because the measuring core must import on a bare GPU
image without UI packages.

Values are passed to plotly as Python lists rather than numpy arrays: plotly >= 6 encodes arrays
as base64 typed arrays, which a reader of the HTML or of the dashboard's chart spec cannot check.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from segbench import analysis as an

if TYPE_CHECKING:  # for annotations only: no runtime import of plotly here
    import plotly.graph_objects as go

INSTALL_HINT = "pip install 'segbench[dashboard]'"
CHANCE_WARNING = "Random-weight model: accuracy here is chance level, not skill"

# Failed cells get a marker of their own on the scaling figure, at the context where they failed.
STATUS_STYLE: dict[str, tuple[str, str, str]] = {  # status -> (legend name, symbol, color)
    "oom": ("OOM", "x", "#d62728"),
    "timeout": ("timeout", "hourglass", "#ff7f0e"),
    "killed": ("killed", "cross", "#9467bd"),
    "error": ("error", "diamond", "#222222"),
    "unsupported": ("unsupported", "square-open", "#7f7f7f"),
    "skipped": ("skipped", "circle-open", "#aaaaaa"),
    "lost": ("lost", "triangle-down", "#8c564b"),
}
FRONT_COLOR = "#333333"
FAILED_COLOR = "#c00000"
MAX_NOT_OK_NAMED = 6  # failed configurations named inside one Pareto panel
BEST_COLOR = "#f5c518"
DOMINATED_ALPHA = 0.25


class MissingDashboardDependency(ImportError):
    """plotly (or streamlit) is an optional extra; say how to get it instead of a bare ImportError."""


def require_plotly():
    """(plotly.graph_objects, make_subplots), or a MissingDashboardDependency naming the extra."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as e:
        raise MissingDashboardDependency(
            f"plotly is needed for segbench figures and the HTML report: {INSTALL_HINT}"
        ) from e
    return go, make_subplots


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _values(s: pd.Series | Any) -> list:
    """Plain floats with None for missing: JSON-safe and readable in the spec."""
    out = []
    for v in s:
        f = float(v) if v is not None and not pd.isna(v) else math.nan
        out.append(None if math.isnan(f) else f)
    return out


def color_map(series: list[str]) -> dict[str, str]:
    """A stable color per series name, the same in every panel and figure of one data set."""
    from plotly.colors import qualitative

    palette = qualitative.Plotly + qualitative.D3
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(series))}


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _error(df: pd.DataFrame, key: str, color: str, unit: str | None = None) -> dict | None:
    """Asymmetric error bars from `<key>_ci_low/_high`, or None when no point has an interval."""
    lo, hi = f"{key}_ci_low", f"{key}_ci_high"
    if lo not in df or df[lo].isna().all():
        return None
    value = an.to_display(pd.to_numeric(df[key]), key, unit)
    plus = an.to_display(pd.to_numeric(df[hi]), key, unit) - value
    minus = value - an.to_display(pd.to_numeric(df[lo]), key, unit)
    return dict(type="data", symmetric=False, array=_values(plus), arrayminus=_values(minus), color=color)


HOVER_COLUMNS = (
    "label", "method", "series", "context_len", "n_repeats", "params", "model", "dtype", "device",
    "git_sha", "git_dirty", "segbench_version", "hostname", "gpu_name", "cpu_name", "started_at",
    "config_hash", "source", "run", "status", "status_detail", "dominated_by",
)  # fmt: skip


def _records(df: pd.DataFrame, columns: list[str]) -> list[dict]:
    """Rows as dicts of just `columns`: iterrows / to_dict over all ~70 columns is 10x slower."""
    present = [c for c in dict.fromkeys(columns) if c in df.columns]
    values = [df[c].tolist() for c in present]
    return [dict(zip(present, row, strict=True)) for row in zip(*values, strict=True)]


def _hover_columns(keys: list[str]) -> list[str]:
    return [*HOVER_COLUMNS, *keys, *(f"{k}{s}" for k in keys for s in an.INTERVAL_SUFFIXES)]


def _esc(value: Any, limit: int = 160) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–"
    text = str(value)
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def escape(text: str) -> str:
    """Escape for plotly's text: only &, < and >. plotly.js decodes a few entities (&amp; &lt; &gt;,
    numeric ones) but not &quot;, so html.escape's default showed params as {&quot;k&quot;: 1}."""
    return html.escape(str(text), quote=False)


def hover_text(row: dict, keys: list[str]) -> str:
    """What a point is and where it came from: the numbers plus enough provenance to find the cell."""
    lines = [f"<b>{_esc(row.get('label'))}</b> ({_esc(row.get('method'))})"]
    lines.append(f"context {an.format_tokens(row['context_len'])} tokens")
    for key in keys:
        text = f"{an.metric_info(key).label}: {an.format_value(key, row.get(key))}"
        lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
        if lo is not None and hi is not None and not pd.isna(lo) and not pd.isna(hi):
            text += f" [{an.format_value(key, lo)}, {an.format_value(key, hi)}]"
            kind = row.get(f"{key}_interval")
            if isinstance(kind, str) and kind:
                text += f" ({kind})"
        lines.append(escape(text))
    if "n_repeats" in row and not pd.isna(row["n_repeats"]):
        lines.append(f"repeats: {int(row['n_repeats'])}")
    dirty = "+dirty" if row.get("git_dirty") is True else ""
    lines += [
        f"params: {_esc(row.get('params'))}",
        f"model: {_esc(row.get('model'))} · {_esc(row.get('dtype'))} · {_esc(row.get('device'))}",
        f"git {_esc(row.get('git_sha'), 12)}{dirty} · segbench {_esc(row.get('segbench_version'))}",
        f"host {_esc(row.get('hostname'))} · {_esc(row.get('gpu_name') or row.get('cpu_name'))}",
        f"started {_esc(row.get('started_at'))} · cell {_esc(row.get('config_hash'), 16)}",
        f"run {_esc(row.get('run'))}",
        f"source {_esc(row.get('source'))}",
    ]
    return "<br>".join(lines)


def _empty(message: str) -> go.Figure:
    go, _ = require_plotly()
    fig = go.Figure()
    fig.add_annotation(text=escape(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _title(text: str, chance: bool) -> str:
    if chance:
        text += f"<br><span style='color:#c00000'>⚠ {CHANCE_WARNING}</span>"
    return text


# Labelled ticks on a log axis at least this factor apart: closer ones overlap (1000 and 1024, or
# 3K and 4K in a narrow panel).
MIN_TICK_RATIO = 1.45


def context_ticks(contexts: list[int]) -> list[int]:
    """The measured lengths that get a label: ascending, each >= MIN_TICK_RATIO x the previous, the
    longest always among them (where methods differ most), replacing a kept one too close to it."""
    every = sorted(set(int(c) for c in contexts if c and c > 0))
    kept: list[int] = []
    for c in every:
        if not kept or c >= kept[-1] * MIN_TICK_RATIO:
            kept.append(c)
    if every and kept[-1] != every[-1]:
        kept[-1] = every[-1]
    return kept


def _context_axis(fig: go.Figure, contexts: list[int], **where) -> None:
    """Context length on a log2 axis: plotly has log10 only, so ticks sit at the measured lengths."""
    ticks = context_ticks(contexts)
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[an.format_tokens(c) for c in ticks], **where)


def log_ticks(values) -> dict:
    """Round tick values spanning `values` (display units): as many per decade as fit in ~7 labels.

    plotly's own log ticks label 2..9 of every decade, which overlap in a narrow panel.
    """
    v = pd.to_numeric(pd.Series(list(values)), errors="coerce")
    v = v[(v > 0) & v.notna()]
    if v.empty:
        return {}
    lo, hi = math.floor(math.log10(v.min())) - 1, math.ceil(math.log10(v.max())) + 1
    for mantissas in ((1, 1.5, 2, 3, 5, 7), (1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in mantissas]
        shown = [t for t in ticks if v.min() / 1.5 <= t <= v.max() * 1.5]
        if len(shown) <= 7:
            break
    if sum(v.min() <= t <= v.max() for t in shown) < 2:  # narrow: plotly's own ticks do not crowd
        return {}
    return dict(tickvals=shown, ticktext=[f"{t:g}" for t in shown])


# ----------------------------------------------------------------------------------------------
# Pareto
# ----------------------------------------------------------------------------------------------


def _axis_ref(n: int) -> str:
    """make_subplots numbers panels row-major from 1 and names the first axis plain "x"."""
    return "" if n == 1 else str(n)


def pareto_figure(
    view: an.ParetoView, *, log_x: bool = False, log_y: bool = False, max_cols: int = 3
) -> go.Figure:
    """One panel per context length: front as a step line, dominated cells faded, best starred.

    Every trace carries `meta.role` ("pareto-front", "points", "best-under-budget") and
    `meta.context_len`; a points trace also has `meta.on_front`, one flag per point. Configurations
    that did not finish ok at a context are named in that panel (an annotation named
    "not-ok:<context>", details on hover): at a memory budget, "it ran out" is the key fact.
    """
    go, make_subplots = require_plotly()
    x, y = view.x, view.y
    contexts = view.contexts
    if not contexts:
        return _empty(f"No ok cell has both {an.metric_info(x).label} and {an.metric_info(y).label}.")
    points = pd.concat([view.front.assign(on_front=True), view.dominated.assign(on_front=False)])
    # One unit per axis for the whole figure, chosen as the tables choose (MiB below 1 GiB).
    ux, uy = an.display_unit(x, points[x]), an.display_unit(y, points[y])
    cols = min(len(contexts), max_cols)
    rows = math.ceil(len(contexts) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[f"{an.format_tokens(c)} tokens" for c in contexts],
        horizontal_spacing=0.07,
        vertical_spacing=0.16 if rows > 1 else 0.1,
    )
    points["series"] = an.series_names(points)
    colors = color_map(points["series"].unique().tolist())
    # The step between two front points goes along x first when x is a cost (e.g. memory).
    shape = "vh" if an.metric_info(x).higher_is_better else "hv"
    keys = list(dict.fromkeys([x, y] + ([view.budget.column] if view.budget else [])))
    # Traces are collected and added in one call: plotly validates per call, which dominates the
    # time of a dashboard rerun otherwise.
    traces, panels, shapes = [], [], []
    best_in_legend = False
    for i, ctx in enumerate(contexts):
        front = view.front[view.front["context_len"] == ctx]
        traces.append(
            go.Scatter(
                x=_values(an.to_display(front[x], x, ux)),
                y=_values(an.to_display(front[y], y, uy)),
                mode="lines",
                line=dict(shape=shape, color=FRONT_COLOR, width=1.5),
                name="Pareto front",
                legendgroup="front",
                showlegend=i == 0,
                hoverinfo="skip",
                meta={"role": "pareto-front", "context_len": ctx},
            )
        )
        panels.append(i)
        # Front and dominated cells are separate traces so the faded ones' error bars fade too.
        panel = points[points["context_len"] == ctx]
        for (series, _), g in panel.groupby(["series", "on_front"], sort=True):
            traces.append(_points_trace(go, g, series, colors[series], keys, view, (ux, uy)))
            panels.append(i)
        if view.budget is not None:
            shapes += _budget_lines(view, i + 1, (ux, uy))
            best = view.best[view.best["context_len"] == ctx]
            if not best.empty:
                traces.append(_best_trace(go, best, view, ctx, first=not best_in_legend, units=(ux, uy)))
                panels.append(i)
                best_in_legend = True
    # One legend entry per series, in its solid color, whether or not it reaches a front.
    for series in sorted(colors):
        traces.append(_legend_entry(go, series, colors[series]))
        panels.append(0)
    fig.add_traces(traces, rows=[p // cols + 1 for p in panels], cols=[p % cols + 1 for p in panels])
    axes: dict = {}
    xticks = log_ticks(an.to_display(points[x], x, ux)) if log_x else {}
    yticks = log_ticks(an.to_display(points[y], y, uy)) if log_y else {}
    for i in range(len(contexts)):
        n = _axis_ref(i + 1)
        bottom = i + cols >= len(contexts)  # nothing below this panel
        axes[f"xaxis{n}"] = dict(
            type="log" if log_x else "linear", title_text=an.axis_title(x, ux) if bottom else None, **xticks
        )
        axes[f"yaxis{n}"] = dict(
            type="log" if log_y else "linear",
            title_text=an.axis_title(y, uy) if i % cols == 0 else None,
            **yticks,
        )
    title = f"{an.metric_info(y).label} vs {an.metric_info(x).label}: Pareto front per context length"
    for i, ctx in enumerate(contexts):
        note = _not_ok_annotation(view, ctx, i + 1)
        if note is not None:
            fig.add_annotation(note)
    fig.update_layout(
        **axes,
        shapes=shapes,
        title=_title(title, view.chance_accuracy),
        height=140 + 360 * rows,
        legend=dict(groupclick="togglegroup"),
        margin=dict(t=110 if view.chance_accuracy else 80),
    )
    return fig


def _not_ok_annotation(view: an.ParetoView, ctx: int, panel: int) -> dict | None:
    """The configurations that did not finish ok at `ctx`, named in the panel's empty corner.

    The corner is the ideal one (low cost, high benefit), which no cell can occupy without
    being on the front itself, so the note rarely hides a point.
    """
    failed = view.failed[view.failed["context_len"] == ctx]
    failed = failed[~failed["ok_too"].astype(bool)]  # those with an ok repeat are on the plot
    if failed.empty:
        return None
    entries = [
        f"{escape(r['series'])}: {STATUS_STYLE.get(r['status'], (r['status'],))[0]}"
        for r in _records(failed, ["series", "status"])
    ]
    if len(entries) > MAX_NOT_OK_NAMED:  # a long list would cover the panel; the page lists all
        entries = entries[: MAX_NOT_OK_NAMED - 1] + [f"+{len(entries) - MAX_NOT_OK_NAMED + 1} more (hover)"]
    lines = ["not ok: " + ", ".join(entries[:2])] + [
        ", ".join(entries[i : i + 2]) for i in range(2, len(entries), 2)
    ]
    details = [
        f"<b>{escape(r['series'])}</b>: {escape(r['status'])} ({int(r['cells'])} cell(s))<br>"
        f"{_esc(r.get('status_detail'), 120)}"
        for r in _records(failed, ["series", "status", "cells", "status_detail"])
    ]
    right = an.metric_info(view.x).higher_is_better
    top = an.metric_info(view.y).higher_is_better
    n = _axis_ref(panel)
    return dict(
        name=f"not-ok:{ctx}",
        text="<br>".join(lines),
        hovertext="<br>".join(details),
        showarrow=False,
        xref=f"x{n} domain",
        yref=f"y{n} domain",
        x=0.99 if right else 0.01,
        y=0.99 if top else 0.01,
        xanchor="right" if right else "left",
        yanchor="top" if top else "bottom",
        align="right" if right else "left",
        font=dict(color=FAILED_COLOR, size=11),
        bgcolor="rgba(255,255,255,0.85)",
    )


def _points_trace(go, g: pd.DataFrame, series: str, color: str, keys: list[str], view, units):
    """One series' front cells (solid, outlined) or dominated cells (faded) in one panel."""
    ux, uy = units
    on_front = g["on_front"].tolist()
    shade = color if on_front[0] else _rgba(color, DOMINATED_ALPHA)
    return go.Scatter(
        x=_values(an.to_display(g[view.x], view.x, ux)),
        y=_values(an.to_display(g[view.y], view.y, uy)),
        mode="markers",
        marker=dict(
            color=shade,
            size=11 if on_front[0] else 8,
            line=dict(color=FRONT_COLOR if on_front[0] else shade, width=1),
        ),
        error_x=_error(g, view.x, _rgba(color, 0.7 if on_front[0] else DOMINATED_ALPHA), ux),
        error_y=_error(g, view.y, _rgba(color, 0.7 if on_front[0] else DOMINATED_ALPHA), uy),
        name=series,
        legendgroup=series,
        showlegend=False,
        hovertext=[_point_hover(r, keys, view) for r in _records(g, _hover_columns(keys))],
        hovertemplate="%{hovertext}<extra></extra>",
        meta={"role": "points", "context_len": int(g["context_len"].iloc[0]), "on_front": on_front},
    )


def _legend_entry(go, series: str, color: str):
    return go.Scatter(
        x=[None],
        y=[None],
        mode="markers",
        marker=dict(color=color, size=11),
        name=series,
        legendgroup=series,
        showlegend=True,
        meta={"role": "legend"},
    )


def _point_hover(row: dict, keys: list[str], view: an.ParetoView) -> str:
    text = hover_text(row, keys)
    beaten_by = row.get("dominated_by")  # NaN on front rows
    if not isinstance(beaten_by, float) and beaten_by in view.front.index:
        text += f"<br><i>dominated by {_esc(view.front.loc[beaten_by].get('label'))}</i>"
    return text


def _budget_lines(view: an.ParetoView, panel: int, units: tuple[str, str]) -> list[dict]:
    """The budget as a dashed line on its axis in panel `panel` (none if it is not an axis)."""
    assert view.budget is not None
    n = _axis_ref(panel)
    line = dict(color=BEST_COLOR, width=2, dash="dash")
    if view.budget.column == view.x:
        at = an.to_display(view.budget.limit, view.x, units[0])
        return [dict(type="line", xref=f"x{n}", yref=f"y{n} domain", x0=at, x1=at, y0=0, y1=1, line=line)]
    if view.budget.column == view.y:
        at = an.to_display(view.budget.limit, view.y, units[1])
        return [dict(type="line", xref=f"x{n} domain", yref=f"y{n}", x0=0, x1=1, y0=at, y1=at, line=line)]
    return []


def _best_trace(go, best: pd.DataFrame, view: an.ParetoView, ctx: int, first: bool, units):
    assert view.budget is not None
    keys = list(dict.fromkeys([view.x, view.y, view.budget.column]))
    return go.Scatter(
        x=_values(an.to_display(best[view.x], view.x, units[0])),
        y=_values(an.to_display(best[view.y], view.y, units[1])),
        mode="markers",
        marker=dict(symbol="star", size=20, color=BEST_COLOR, line=dict(color=FRONT_COLOR, width=1)),
        name=f"Best under {an.metric_info(view.budget.column).label} ≤ "
        f"{an.format_value(view.budget.column, view.budget.limit)}",
        legendgroup="best",
        showlegend=first,
        hovertext=[
            "<b>best under budget</b><br>" + hover_text(r, keys) for r in _records(best, _hover_columns(keys))
        ],
        hovertemplate="%{hovertext}<extra></extra>",
        meta={"role": "best-under-budget", "context_len": ctx},
    )


# ----------------------------------------------------------------------------------------------
# Scaling
# ----------------------------------------------------------------------------------------------


def scaling_figure(view: an.ScalingView, *, log_y: bool = False) -> go.Figure:
    """A metric against context length per series; estimates dashed; failures in a strip below.

    Without failures there is no strip: one panel whose x axis carries the ticks and title (an
    empty strip would hold the only labelled x axis).
    """
    go, make_subplots = require_plotly()
    key = view.key
    series = sorted(
        set(view.measured["series"]) | set(view.estimate["series"]) | set(view.failures["series"])
    )
    if not series:
        return _empty(f"No cell measured {an.metric_info(key).label}.")
    unit = an.display_unit(key, pd.concat([view.measured[key], view.estimate["estimate"]]))
    # Failed cells have no value to plot, so they get their own strip instead of a fake y.
    failing = sorted(set(view.failures["series"]), reverse=True)  # reversed: top-down alphabetical
    if failing:
        strip = 28 * len(failing) + 40  # px: one labelled row per series that failed somewhere
        height = 480 + strip
        fig = make_subplots(
            rows=2,
            cols=1,
            shared_xaxes=True,
            row_heights=[1 - strip / height, strip / height],
            vertical_spacing=0.06,
        )
    else:
        height = 480
        fig = make_subplots(rows=1, cols=1)
    bottom = 2 if failing else 1
    colors = color_map(series)
    for name in series:
        m = view.measured[view.measured["series"] == name].sort_values("context_len")
        if not m.empty:
            fig.add_trace(
                go.Scatter(
                    x=_values(m["context_len"]),
                    y=_values(an.to_display(m[key], key, unit)),
                    mode="lines+markers",
                    line=dict(color=colors[name]),
                    error_y=_error(m, key, colors[name], unit),
                    name=name,
                    legendgroup=name,
                    hovertext=[hover_text(r, [key]) for r in _records(m, _hover_columns([key]))],
                    hovertemplate="%{hovertext}<extra></extra>",
                    meta={"role": "measured", "series": name},
                ),
                row=1,
                col=1,
            )
        e = view.estimate[view.estimate["series"] == name].sort_values("context_len")
        if not e.empty:
            fig.add_trace(
                go.Scatter(
                    x=_values(e["context_len"]),
                    y=_values(an.to_display(e["estimate"], key, unit)),
                    # A lone estimate (e.g. a method that failed at its only context) is no line.
                    mode="lines" if len(e) > 1 else "markers",
                    marker=dict(symbol="circle-open", size=10),
                    line=dict(color=colors[name], dash="dash"),
                    name=f"{name} (estimate)",
                    legendgroup=name,
                    hovertemplate=f"{escape(name)} estimate<br>%{{y:.3g}} {unit}<extra></extra>",
                    meta={"role": "estimate", "series": name},
                ),
                row=1,
                col=1,
            )
    for status, (label, symbol, color) in STATUS_STYLE.items():
        f = view.failures[view.failures["status"] == status]
        if f.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=_values(f["context_len"]),
                y=f["series"].tolist(),
                mode="markers",
                marker=dict(symbol=symbol, size=12, color=color, line=dict(color=color, width=2)),
                name=label,
                legendgroup=f"status:{status}",
                hovertext=[
                    f"<b>{_esc(r['series'])}</b>: {status} at {an.format_tokens(r['context_len'])}"
                    f"<br>{_esc(r.get('status_detail'))}<br>cell {_esc(r.get('config_hash'), 16)}"
                    for r in _records(f, list(HOVER_COLUMNS))
                ],
                hovertemplate="%{hovertext}<extra></extra>",
                meta={"role": "failure", "status": status},
            ),
            row=2,
            col=1,
        )
    contexts = sorted(
        {
            int(c)
            for part in (view.measured, view.estimate, view.failures)
            for c in part["context_len"].dropna()
        }
    )
    _context_axis(fig, contexts)
    fig.update_xaxes(title_text="Context length (tokens, log2)", row=bottom, col=1)
    yticks = log_ticks(an.to_display(view.measured[key], key, unit)) if log_y else {}
    fig.update_yaxes(
        title_text=an.axis_title(key, unit), type="log" if log_y else "linear", row=1, col=1, **yticks
    )
    if failing:
        fig.update_yaxes(
            title_text="not ok",
            type="category",
            categoryorder="array",
            categoryarray=failing,
            tickmode="linear",  # a label on every row, even when the strip is short
            dtick=1,
            range=[-0.6, len(failing) - 0.4],
            row=2,
            col=1,
        )
    title = f"{an.metric_info(key).label} vs context length"
    fig.update_layout(
        title=_title(title, view.chance_accuracy), height=height, legend=dict(groupclick="togglegroup")
    )
    return fig


# ----------------------------------------------------------------------------------------------
# Comparing runs
# ----------------------------------------------------------------------------------------------


def ratio_figure(compared: pd.DataFrame, key: str, name_a: str, name_b: str) -> go.Figure:
    """B / A of one metric against context length per configuration; 1 means no change."""
    go, _ = require_plotly()
    ratio = f"{key}_ratio"
    rows = compared[compared[ratio].notna()].copy()
    if rows.empty:
        return _empty(f"No configuration has {an.metric_info(key).label} in both runs.")
    names = rows["label"].fillna(rows["method"]).astype(str)
    names = names.where(rows["task"].fillna("") == "", names + " · " + rows["task"].astype(str))
    rows["series"] = names
    colors = color_map(rows["series"].unique().tolist())
    fig = go.Figure()
    for name, g in rows.sort_values("context_len").groupby("series", sort=True):
        fig.add_trace(
            go.Scatter(
                x=_values(g["context_len"]),
                y=_values(g[ratio]),
                mode="lines+markers",
                line=dict(color=colors[name]),
                name=name,
                hovertext=[
                    f"<b>{_esc(name)}</b> at {an.format_tokens(r['context_len'])}<br>"
                    f"A: {an.format_value(key, r[f'{key}_a'])}<br>B: {an.format_value(key, r[f'{key}_b'])}"
                    f"<br>B / A = {r[ratio]:.3f}"
                    for r in _records(g, ["context_len", ratio, f"{key}_a", f"{key}_b"])
                ],
                hovertemplate="%{hovertext}<extra></extra>",
                meta={"role": "ratio", "series": name},
            )
        )
    fig.add_hline(y=1.0, line=dict(color=FRONT_COLOR, dash="dot"))
    _context_axis(fig, sorted(int(c) for c in rows["context_len"].dropna().unique()))
    fig.update_layout(
        title=f"{an.metric_info(key).label}: {escape(name_b)} / {escape(name_a)}",
        xaxis_title="Context length (tokens, log2)",
        yaxis_title="ratio B / A",
        height=480,
    )
    return fig
