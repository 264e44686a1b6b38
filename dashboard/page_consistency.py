"""Consistency page: the 2x2 table of `segbench train` (trained full or segmented x inferred full
or segmented), read from any consistency summary.json under the results directories."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

CELLS = (("seg_trained", "trained segmented"), ("full_trained", "trained full"))
INFER = (("seg_infer", "segmented inference"), ("full_infer", "full inference"))


def find_summaries(dirs: list[str]) -> list[Path]:
    """summary.json files that hold a consistency table, below or at each results directory."""
    found = []
    for d in dirs:
        for path in sorted(Path(d).rglob("summary.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and "seg_trained" in data and "full_trained" in data:
                found.append(path)
    return found


def table(summary: dict) -> pd.DataFrame:
    rows = {}
    for key, name in CELLS:
        rows[name] = {
            title: f"{summary[key][inf]['score']:.1f} [{summary[key][inf]['ci95'][0]:.1f}, {summary[key][inf]['ci95'][1]:.1f}]"
            for inf, title in INFER
        }
    return pd.DataFrame(rows).T


def curve_frame(summary: dict) -> pd.DataFrame:
    """One row per curve step, one column per (trained, inferred) pair: what the summary's curves hold."""
    series = []
    for key, name in CELLS:
        points = (summary.get("curves") or {}).get(key) or []
        for inf, title in INFER:
            s = pd.Series({p["step"]: p[inf] for p in points if inf in p}, name=f"{name} / {title}", dtype=float)
            if not s.empty:
                series.append(s)
    if not series:
        return pd.DataFrame()
    return pd.concat(series, axis=1).sort_index().rename_axis("step").reset_index()


def render(dirs: list[str]) -> None:
    st.header("Training-inference consistency")
    summaries = find_summaries(dirs)
    if not summaries:
        st.info(
            "No consistency summary under these results; `segbench train train/consistency_toy.yaml` writes one "
            "to results/consistency/summary.json."
        )
        return
    path = summaries[0] if len(summaries) == 1 else Path(st.selectbox("Summary", [str(p) for p in summaries]))
    summary = json.loads(Path(path).read_text())
    st.caption(
        f"{path} - accuracy in %, 95% interval, n={summary.get('n')} held-out samples; "
        f"chance is {summary.get('chance', 'n/a')}%."
    )
    st.dataframe(table(summary))
    curves = curve_frame(summary)
    if not curves.empty:
        st.subheader("Learning curves")
        st.caption("Held-out accuracy (%) under each inference, every few training steps, for each trained model.")
        st.line_chart(curves, x="step", y=[c for c in curves.columns if c != "step"])
    with st.expander("Provenance"):
        st.json(summary.get("provenance", {}))
