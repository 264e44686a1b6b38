"""Which run a row came from, named so two runs of the same suite can be told apart.

A run is one suite directory (the `source` column). Its basename is usually the suite's name, so
`results/cpu_smoke` (the user's `make demo`) and `results/examples/cpu_smoke` (the shipped example)
would both be called "cpu_smoke" and pooled into one series. A run's label therefore joins the
shortest path suffix that is unique among the loaded runs, the run's start time (its earliest
`started_at`) and the commit that produced it (`git_sha`): e.g. `examples/cpu_smoke · 2026-11-23
17:13 · 5e74ac9`. Pure pandas: the report uses it on a bare GPU image.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

RUN = "run"  # the column load_results adds: one label per source directory


def _short_dirs(sources: list[str]) -> dict[str, str]:
    """Each source's shortest trailing path that no other source shares ("" stays "")."""
    parts = {s: Path(s).parts for s in sources if s}
    out = {s: "" for s in sources if not s}
    depth = 1
    pending = dict(parts)
    while pending:
        tails = {s: "/".join(p[-depth:]) for s, p in pending.items()}
        counts = pd.Series(list(tails.values())).value_counts()
        longest = max(len(p) for p in pending.values())
        for s, tail in tails.items():
            # Also stop at the full path: two sources can only share it if they are the same string.
            if counts[tail] == 1 or depth >= longest:
                out[s] = tail
        pending = {s: p for s, p in pending.items() if s not in out}
        depth += 1
    return out


def _sha_text(shas: pd.Series) -> str:
    """The run's commit, short; `+N` says N other commits also wrote cells into this directory."""
    seen = shas.dropna().astype(str)
    seen = seen[seen != ""]
    if seen.empty:
        return "no git sha"
    counts = seen.value_counts()
    main = str(counts.index[0])[:7]
    return main if len(counts) == 1 else f"{main}+{len(counts) - 1}"


def run_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per source: source, run (its label), started (UTC Timestamp or NaT), git_sha,
    hosts, cells; oldest first (ties by label), so the last row is the newest run."""
    columns = ["source", RUN, "started", "git_sha", "hosts", "cells"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    source = df["source"].fillna("").astype(str)
    started = pd.to_datetime(df["started_at"], utc=True, errors="coerce", format="ISO8601")
    short = _short_dirs(sorted(source.unique()))
    rows = []
    for src, idx in source.groupby(source, sort=True).groups.items():
        first = started.loc[idx].min()
        when = first.strftime("%Y-%m-%d %H:%M") if not pd.isna(first) else "start unknown"
        sha = _sha_text(df.loc[idx, "git_sha"])
        name = short[src] or "run"
        hosts = ", ".join(sorted(set(df.loc[idx, "hostname"].dropna().astype(str)) - {""}))
        rows.append(
            {"source": src, RUN: f"{name} · {when} · {sha}", "started": first, "git_sha": sha,
             "hosts": hosts, "cells": len(idx)}
        )  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    table["_has_time"] = table["started"].notna()
    table = table.sort_values(["_has_time", "started", RUN], kind="stable").drop(columns="_has_time")
    return table.reset_index(drop=True)


def run_labels(df: pd.DataFrame) -> pd.Series:
    """The run label of every row (aligned with df's index)."""
    if df.empty:
        return pd.Series([], index=df.index, dtype="str")
    table = run_table(df)
    labels = dict(zip(table["source"], table[RUN], strict=True))
    return df["source"].fillna("").astype(str).map(labels).astype("str")


def newest_pair(runs_oldest_first: list[str]) -> tuple[str, str] | None:
    """(A, B) for a comparison: B the newest run, A the run just before it.

    The usual question is "did my latest change help?", so the baseline is the previous run and the
    ratio B / A < 1 means the newest run is cheaper. None with fewer than two runs.
    """
    if len(runs_oldest_first) < 2:
        return None
    return runs_oldest_first[-2], runs_oldest_first[-1]
