"""Cells page: every row, failures included, and the full provenance of any one of them."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from segbench.dashboard.common import chance_warning

from segbench import analysis as an
from segbench.schema import COLUMN_BY_NAME, COLUMN_NAMES, STATUSES

TABLE_COLUMNS = (
    "status",
    "method",
    "label",
    "context_len",
    "task",
    "repeat_group",
    "peak_prefill_mem_bytes",
    "kv_cache_bytes",
    "ttft_s",
    "decode_ms_p50",
    "score",
    "model_trained",
    "status_detail",
    "config_hash",
    "run",
    "source",
)
# Shown in a display unit with the unit in the header (the provenance table keeps raw values).
CONVERTED = ("peak_prefill_mem_bytes", "kv_cache_bytes", "score")
SEARCHED = ("method", "label", "params", "status_detail", "config_hash", "task")


MISSING = "(missing)"


def _filtered(df: pd.DataFrame) -> pd.DataFrame:
    # A row without status or context is still a row: broken rows are what this page is for.
    status = df["status"].fillna(MISSING)
    present = set(status)
    statuses = [s for s in STATUSES if s in present] + sorted(present - set(STATUSES))
    contexts = sorted(int(c) for c in df["context_len"].dropna().unique())
    c1, c2, c3 = st.columns(3)
    with c1:
        chosen = st.multiselect("Status", statuses, default=statuses, key="cells_status")
    with c2:
        ctx = st.multiselect(
            "Context lengths", contexts, default=contexts, format_func=an.format_tokens, key="cells_contexts"
        )
    with c3:
        kind = st.selectbox("Rows", ["all", "latency", *an.tasks(df)], key="cells_kind")
    text = st.text_input("Search method, label, params, detail, hash", key="cells_search").strip().lower()
    keep = status.isin(chosen) & (df["context_len"].isin(ctx) | df["context_len"].isna())
    if kind == "latency":
        keep &= ~an.is_accuracy_row(df)
    elif kind != "all":
        keep &= df["task"] == kind
    if text:
        hay = df[list(SEARCHED)].fillna("").astype(str).agg(" ".join, axis=1).str.lower()
        keep &= hay.str.contains(text, regex=False)
    return df[keep]


def _display(rows: pd.DataFrame) -> pd.DataFrame:
    """Memory in MiB or GiB (as the data needs), accuracy x100, each header naming its unit."""
    out = rows.copy()
    for col in CONVERTED:
        unit = an.display_unit(col, out[col])
        out[col] = an.to_display(pd.to_numeric(out[col], errors="coerce"), col, unit)
        out = out.rename(columns={col: an.axis_title(col, unit)})
    return out


def _cell_name(row: pd.Series) -> str:
    task = f" · {row['task']}" if isinstance(row["task"], str) and row["task"] else ""
    ctx = an.format_tokens(row["context_len"]) if not pd.isna(row["context_len"]) else "?"
    rep = "" if pd.isna(row["repeat_group"]) else f" · repeat {row['repeat_group']}"
    return f"{row['label']} · {ctx}{task}{rep} · {row['status']} · {str(row['config_hash'])[:10]}"


def render(df: pd.DataFrame) -> None:
    st.header("Cells: every row, failures included")
    rows = _filtered(df)
    st.caption(f"{len(rows)} of {len(df)} cells")
    chance_warning(rows)
    st.dataframe(_display(rows[list(TABLE_COLUMNS)]))
    if rows.empty:
        return
    # Options are row labels; after a filter change the widget may still hold a label now filtered out.
    picked = st.selectbox(
        "Provenance of cell",
        rows.index.tolist(),
        format_func=lambda i: _cell_name(rows.loc[i]) if i in rows.index else str(i),
        key="cells_pick",
    )
    row = rows.loc[picked if picked in rows.index else rows.index[0]]
    # Values are shown as text: one column holding ints, floats, bools and JSON would not convert.
    provenance = pd.DataFrame(
        {
            "column": [*COLUMN_NAMES, "source", "run"],
            "value": ["" if _missing(row[c]) else str(row[c]) for c in [*COLUMN_NAMES, "source", "run"]],
            "meaning": [COLUMN_BY_NAME[c].doc for c in COLUMN_NAMES]
            + ["Result directory the row was read from.", "The run: directory · first start (UTC) · commit."],
        }
    )
    st.dataframe(provenance, hide_index=True, height=600)


def _missing(value) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))
