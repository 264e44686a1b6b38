"""segbench dashboard, the Streamlit entry point.

    streamlit run dashboard/app.py -- RESULTS_DIR [RESULTS_DIR ...]

or `segbench dashboard RESULTS_DIR ...`. Without arguments it reads $SEGBENCH_RESULTS (paths joined
with os.pathsep), else results/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st
from segbench.dashboard import (
    common,
    page_cells,
    page_compare,
    page_consistency,
    page_pareto,
    page_scaling,
    page_timeline,
)

PAGES = {
    "Pareto": page_pareto.render,
    "Scaling": page_scaling.render,
    "Timeline": page_timeline.render,
    "Cells": page_cells.render,
    "Compare runs": page_compare.render,
    "Consistency": None,  # reads the training summary, not the cell rows
}


def results_dirs() -> list[str]:
    # `streamlit run app.py -- DIRS` leaves argv = [app.py, DIRS...]. Under AppTest argv is the test
    # runner's, so argv counts only when its first entry is this very script.
    if len(sys.argv) > 1 and Path(sys.argv[0]).resolve() == Path(__file__).resolve():
        return sys.argv[1:]
    env = os.environ.get("SEGBENCH_RESULTS", "")
    return [p for p in env.split(os.pathsep) if p] or ["results"]


def _shown(path: str) -> str:
    """A results directory as the user would type it: relative to where the app runs, if inside."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return path


def main() -> None:
    st.set_page_config(page_title="segbench", layout="wide")
    dirs = results_dirs()
    df, notes = common.load(dirs)
    with st.sidebar:
        st.title("segbench")
        # A radio rather than st.navigation: AppTest drives it like any widget. `?page=Timeline`
        # opens a page directly (links, scripts/screenshots.py).
        asked = st.query_params.get("page")
        first = list(PAGES).index(asked) if asked in PAGES else 0
        page = st.radio("Page", list(PAGES), index=first, key="page")
    if page == "Consistency":
        page_consistency.render(dirs)
        return
    with st.sidebar:
        shown = common.sidebar_filters(df)
        st.caption(f"{len(shown)} of {len(df)} cells from {', '.join(map(_shown, dirs))}")
        if st.button("Reload results", key="reload"):
            st.cache_data.clear()
            st.rerun()
    if notes:
        st.warning(f"{len(notes)} problem(s) while loading results: {notes[0]}")
        if len(notes) > 1:
            with st.expander("All loading problems"):
                st.write("\n".join(f"- {n}" for n in notes))
    if df.empty:
        st.error(f"No results found under {', '.join(dirs)}: expected results.parquet or cells/*.json.")
        return
    PAGES[page](shown)


main()
