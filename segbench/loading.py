"""Reading result rows: cell files or parquet, typed per segbench.schema, problems noted not fatal.

Result files are read as JSON or parquet only (never pickle, never eval): they may come from
another machine. Every frame gets `source` (its suite directory) and `run` (segbench.runs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from segbench import runs, store
from segbench.metrics import is_missing as _missing
from segbench.schema import COLUMN_BY_NAME, COLUMN_NAMES, STATUSES

RESULTS_PARQUET = "results.parquet"
CELLS_DIR = "cells"
LOAD_NOTES = "load_notes"  # df.attrs key: human-readable problems found while loading


def find_suite_dirs(path: str | Path) -> list[Path]:
    """Suite directories at or under `path`; the store's own discovery, so report and dashboard agree."""
    return store.suite_dirs(path)


def _read_cells(cells_dir: Path, notes: list[str]) -> pd.DataFrame:
    records = []
    for f in sorted(cells_dir.glob("*.json")):
        if not f.is_file():  # a FIFO or a folder would block or fail the read
            notes.append(f"{f}: not a regular file, skipped")
            continue
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            # A cell being written right now, or a truncated one: skip it, say so.
            notes.append(f"{f}: unreadable ({type(e).__name__}: {e})")
            continue
        if not isinstance(obj, dict):
            notes.append(f"{f}: not a JSON object, skipped")
            continue
        records.append(obj)
    return pd.DataFrame.from_records(records) if records else pd.DataFrame()


def _read_suite(suite_dir: Path, notes: list[str]) -> pd.DataFrame:
    parquet = suite_dir / RESULTS_PARQUET
    if parquet.is_file():
        cells = suite_dir / CELLS_DIR
        if cells.is_dir():
            newer = sum(1 for f in cells.glob("*.json") if f.stat().st_mtime > parquet.stat().st_mtime)
            if newer:
                notes.append(f"{parquet}: {newer} cell file(s) are newer; run `segbench report {suite_dir}`")
        try:
            return pd.read_parquet(parquet)
        except Exception as e:  # noqa: BLE001 - a corrupt file must not hide the suites beside it
            notes.append(f"{parquet}: unreadable ({type(e).__name__}), skipped")
    return _read_cells(suite_dir / CELLS_DIR, notes)


def _canonical_json(value):
    """JSON columns become canonical text, so they can be grouped, merged and shown in tables."""
    if _missing(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.ndarray):  # parquet list columns come back as arrays
        value = value.tolist()
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _to_bool(value):
    if _missing(value):
        return pd.NA
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        return pd.NA
    return bool(value)


def _coerce(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Give every schema column its schema type; values that do not fit become missing, noted."""
    out = {}
    for name in COLUMN_NAMES:
        s = df[name]
        kind = COLUMN_BY_NAME[name].dtype
        if kind in ("int", "float"):
            num = pd.to_numeric(s, errors="coerce")
            bad = int((num.isna() & s.notna()).sum())
            if kind == "int":
                fractional = num.notna() & (num != np.floor(num))
                bad += int(fractional.sum())
                num = num.where(~fractional).astype("Int64")
            else:
                num = num.astype("float64")
            if bad:
                notes.append(f"column {name}: {bad} value(s) are not {kind} and were dropped")
            out[name] = num
        elif kind == "bool":
            out[name] = s.map(_to_bool).astype("boolean")
        elif kind in ("json", "list[int]"):
            out[name] = s.map(_canonical_json).astype(object)
        else:
            out[name] = s.map(lambda v: None if _missing(v) else str(v)).astype("str")
    return pd.DataFrame(out, index=df.index)


def empty_results() -> pd.DataFrame:
    """A typed frame with every schema column, `source` and `run`, no rows."""
    df = _coerce(pd.DataFrame({c: pd.Series([], dtype=object) for c in COLUMN_NAMES}), [])
    df["source"] = pd.Series([], dtype="str")
    df[runs.RUN] = pd.Series([], dtype="str")
    return df


def _conform(raw: pd.DataFrame, source: str, notes: list[str]) -> pd.DataFrame:
    unknown = sorted(set(raw.columns) - set(COLUMN_NAMES) - {"source", runs.RUN})
    if unknown:
        notes.append(f"{source or 'results'}: unknown column(s) dropped: {', '.join(map(str, unknown))}")
    sources = raw["source"] if "source" in raw.columns else None
    raw = raw.reindex(columns=list(COLUMN_NAMES))  # adds missing columns as NaN
    raw = raw.astype(object).where(raw.notna(), None)
    typed = _coerce(raw, notes)
    if source or sources is None:
        typed["source"] = source
    else:
        typed["source"] = sources.fillna("").astype(str)
    typed["source"] = typed["source"].astype("str")
    return typed


def conform(df: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """Any frame of result rows (e.g. the store's) typed and shaped exactly as load_results returns.

    Keeps an existing `source` column unless `source` is given (`run` is recomputed from it).
    Problems go to attrs["load_notes"].
    """
    notes: list[str] = list(df.attrs.get(LOAD_NOTES, []))
    out = _conform(df, source, notes) if not df.empty else empty_results()
    out[runs.RUN] = runs.run_labels(out)
    _check_statuses(out, notes)
    out.attrs[LOAD_NOTES] = notes
    return out


def _check_statuses(df: pd.DataFrame, notes: list[str]) -> None:
    bad_status = sorted(set(df["status"].dropna()) - set(STATUSES))
    if bad_status:
        notes.append(f"unknown status value(s): {', '.join(bad_status)}")


def load_results(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Every cell under `paths`, one row each, typed per segbench.schema, plus `source` (the suite
    directory) and `run` (a label telling runs apart: directory, start time, commit; segbench.runs).

    Each path is a suite dir (results.parquet, else cells/*.json) or a parent of several. Columns
    the schema lacks are dropped, missing ones added as None; what was wrong is listed in
    `df.attrs["load_notes"]` so a UI can show it instead of failing.
    """
    notes: list[str] = []
    frames = []
    for path in paths:
        suites = find_suite_dirs(path)
        if not suites:
            notes.append(f"{path}: no results.parquet or cells/ found")
        for suite_dir in suites:
            raw = _read_suite(suite_dir, notes)
            if not raw.empty:
                frames.append(_conform(raw, str(suite_dir), notes))
    df = pd.concat(frames, ignore_index=True) if frames else empty_results()
    df[runs.RUN] = runs.run_labels(df)
    _check_statuses(df, notes)
    df.attrs[LOAD_NOTES] = notes
    return df
