"""Pareto page: two metrics against each other, one front per context length, an optional budget."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from segbench.dashboard.common import metric_select, single_process_note

from segbench import analysis as an
from segbench.figures import CHANCE_WARNING, STATUS_STYLE, pareto_figure

# Budgets are ceilings, so only costs (memory, time) can be one.
BUDGET_UNITS = ("bytes", "s", "ms")


def _budget_controls(df: pd.DataFrame, axes: list[str], x: str) -> an.Budget | None:
    if not st.checkbox("Budget: highlight the best cell under a ceiling", key="pareto_budget_on"):
        return None
    costs = [k for k in axes if an.metric_info(k).unit in BUDGET_UNITS]
    if not costs:
        st.info("No cost metric (memory or time) to put a budget on.")
        return None
    column = st.selectbox(
        "Budget on",
        costs,
        index=costs.index(x) if x in costs else 0,
        format_func=an.picker_label,
        key="pareto_budget_col",
    )
    raw = pd.to_numeric(an.rows_for(df, column)[column]).dropna()
    # The range and unit follow the data: CPU runs measure MiB, GPU runs tens of GiB.
    unit = an.display_unit(column, raw)
    shown = an.to_display(raw, column, unit)
    top = float(shown.max()) * 1.05 if len(shown) and shown.max() > 0 else 1.0
    limit = st.slider(
        f"{an.axis_title(column, unit)} ≤",
        min_value=0.0,
        max_value=top,
        value=float(shown.median()) if len(shown) else top,
        step=top / 200,
        format="%.3f",
        key="pareto_budget",
    )
    return an.Budget(column, an.from_display(limit, column, unit))


def render(df: pd.DataFrame) -> None:
    st.header("Pareto: what each method costs for what it buys")
    axes = an.available_metrics(df)
    if len(axes) < 2:
        st.info("Pareto needs two measured metrics; these results have fewer. See the Cells page.")
        return
    c1, c2, c3 = st.columns([2, 2, 1])
    # `?page=Pareto&x=...&y=score:ruler/niah_single_1` opens the page on those axes (links, screenshots).
    asked = st.query_params
    with c1:
        x = _metric("x axis", axes, asked.get("x", "peak_prefill_mem_bytes"), "pareto_x")
    with c2:
        y = _metric("y axis", axes, asked.get("y", "ttft_s" if x != "ttft_s" else axes[0]), "pareto_y")
    with c3:
        log_x = st.checkbox("log x", key="pareto_log_x")
        log_y = st.checkbox("log y", key="pareto_log_y")
    if x == y:
        st.warning("Pick two different metrics.")
        return
    contexts = sorted(int(c) for c in df.loc[df["status"] == "ok", "context_len"].dropna().unique())
    chosen = st.multiselect(
        "Context lengths (one panel each)",
        contexts,
        default=contexts,
        format_func=an.format_tokens,
        key="pareto_contexts",
    )
    budget = _budget_controls(df, axes, x)
    runs = df["run"].nunique()
    if runs > 1:
        st.caption(
            f"The fronts pool {runs} runs (each point's name says its run); pick one in the sidebar "
            "to compare within a machine."
        )
    view = an.pareto_view(df, x, y, contexts=chosen, budget=budget)
    if view.chance_accuracy:
        st.warning(f"⚠ {CHANCE_WARNING}.")
    _not_ok(view)
    st.plotly_chart(pareto_figure(view, log_x=log_x, log_y=log_y), key="pareto_chart")
    st.caption(
        "Front: no other cell at that context is at least as good on both axes and better on one. "
        "Faded: dominated. Error bars: 95% t-interval over process repeats (a task's own interval for "
        "one run; for a timing measured in one process, the min–max of its timed runs)."
    )
    single_process_note(pd.concat([view.front, view.dominated]), [x, y])
    if budget is not None:
        _best_table(view)
    _tables(view)


def _not_ok(view: an.ParetoView) -> None:
    """Name what is missing from the plot and why: at a memory budget an OOM is the key fact."""
    failed = view.failed[~view.failed["ok_too"].astype(bool)]
    if failed.empty:
        return
    by_ctx = []
    for ctx, g in failed.groupby("context_len", sort=True):
        names = ", ".join(
            f"**{r.series}** ({STATUS_STYLE.get(r.status, (r.status,))[0]})" for r in g.itertuples()
        )
        by_ctx.append(f"{an.format_tokens(ctx)}: {names}")
    st.warning("Not on the plot, did not finish ok — " + "; ".join(by_ctx))
    with st.expander(f"Why: {len(failed)} configuration(s) that did not finish ok"):
        shown = failed.assign(context=failed["context_len"].map(an.format_tokens))
        st.dataframe(
            shown[["context", "series", "status", "status_detail", "cells", "config_hash", "run"]],
            hide_index=True,
        )


def _metric(label: str, axes: list[str], default: str, key: str) -> str:
    return metric_select(label, axes, default, key)


def _best_table(view: an.ParetoView) -> None:
    assert view.budget is not None and view.best_by is not None
    ceiling = f"{an.metric_info(view.budget.column).label} ≤ {an.format_value(view.budget.column, view.budget.limit)}"
    if view.best.empty:
        st.info(f"No cell fits {ceiling}.")
        return
    best = view.best.assign(
        context=view.best["context_len"].map(an.format_tokens),
        value=view.best[view.best_by].map(lambda v: an.format_value(view.best_by, v)),
        cost=view.best[view.budget.column].map(lambda v: an.format_value(view.budget.column, v)),
    )
    st.subheader(f"Best {an.metric_info(view.best_by).label} with {ceiling}")
    st.dataframe(best[["context", "method", "label", "value", "cost", "params"]], hide_index=True)


def _tables(view: an.ParetoView) -> None:
    labels = view.front["label"].fillna(view.front["method"])
    cells = pd.concat([view.front.assign(front=True), view.dominated.assign(front=False)])
    cells["dominated_by"] = cells["dominated_by"].map(
        lambda i: labels.get(i) if not isinstance(i, float) else None
    )
    # The axes' own units and titles, so the table reads like the plot.
    titles = {}
    for key in dict.fromkeys([view.x, view.y]):
        unit = an.display_unit(key, cells[key])
        titles[key] = an.axis_title(key, unit)
        cells[titles[key]] = an.to_display(pd.to_numeric(cells[key]), key, unit)
    shown = [
        "context_len",
        "method",
        "label",
        *titles.values(),
        "front",
        "dominated_by",
        "n_repeats",
        "run",
        "config_hash",
    ]
    with st.expander(f"Cells on the plot ({len(view.front)} on a front, {len(view.dominated)} dominated)"):
        st.dataframe(
            cells[shown].sort_values(["context_len", "front"], ascending=[True, False]), hide_index=True
        )
    if not view.incomplete.empty:
        with st.expander(f"{len(view.incomplete)} configuration(s) lack a value for an axis: not plotted"):
            st.dataframe(
                view.incomplete[["context_len", "method", "label", "missing", "source"]], hide_index=True
            )
