"""Results on disk: one JSON file per finished cell, written atomically; parquet on `report`.

Layout: `<out>/<suite>/cells/<config_hash>.json` (one row each), `<out>/<suite>/suite.json` (the
resolved suite, for provenance) and `<out>/<suite>/results.parquet` (consolidated by report).
A file either exists complete or not at all, so a runner killed at any instant leaves nothing
corrupt and resume trusts what it finds.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from segbench.schema import COLUMN_BY_NAME, COLUMN_NAMES, empty_row

# Statuses a re-run treats as never finished: the runner, not the cell, was interrupted.
RETRY_ALWAYS = ("lost",)


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_default(v):
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def complete_row(partial: dict) -> dict:
    """Every schema column present, in schema order; unknown keys refused (they would be lost)."""
    unknown = set(partial) - set(COLUMN_NAMES)
    if unknown:
        raise KeyError(f"row has keys outside segbench.schema: {sorted(unknown)}")
    row = empty_row()
    row.update(partial)
    return row


class CellStore:
    def __init__(self, suite_dir: Path) -> None:
        self.dir = Path(suite_dir)
        self.cells_dir = self.dir / "cells"

    def path_for(self, config_hash: str) -> Path:
        return self.cells_dir / f"{config_hash}.json"

    def write(self, row: dict) -> Path:
        """Write a cell's row; an accuracy cell's per-sample predictions go to a side file first,
        so a row on disk always has its predictions beside it."""
        row = dict(row)
        predictions = row.pop("_predictions", None)
        if predictions is not None:
            self.write_predictions(row["config_hash"], predictions)
        row["timeline_samples"] = self.write_trace(row["config_hash"], row.pop("_timeline", None))
        path = self.path_for(row["config_hash"])
        write_json_atomic(path, complete_row(row))
        return path

    def predictions_path(self, config_hash: str) -> Path:
        return self.dir / "predictions" / f"{config_hash}.jsonl"

    def write_predictions(self, config_hash: str, predictions: list[dict]) -> None:
        path = self.predictions_path(config_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            for p in predictions:
                f.write(json.dumps(p, default=_json_default) + "\n")
        os.replace(tmp, path)

    def write_trace(self, config_hash: str, trace: dict | None) -> int:
        """A cell's memory timeline, `traces/<config_hash>.json` (contract: segbench/memtrace.py, the writer),
        written before its row; returns its point count, the row's `timeline_samples` (0: none).
        A cell re-run without one (it failed this time) loses the stale one."""
        path = self.dir / "traces" / f"{config_hash}.json"
        if trace is None:
            path.unlink(missing_ok=True)
            return 0
        write_json_atomic(path, trace)
        return len(trace["t_s"])

    def rows(self) -> list[dict]:
        """Every complete cell file (temporary files of an interrupted write are ignored)."""
        if not self.cells_dir.is_dir():
            return []
        out = []
        for path in sorted(self.cells_dir.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue  # only possible if someone edited the file by hand; the cell re-runs
        return out

    def finished(self) -> dict[str, dict]:
        return {r["config_hash"]: r for r in self.rows() if r.get("status") not in RETRY_ALWAYS}

    def clear(self) -> None:
        if self.cells_dir.is_dir():
            for path in self.cells_dir.glob("*.json"):
                path.unlink()

    def remove_stale_temps(self) -> None:
        if self.cells_dir.is_dir():
            for path in self.cells_dir.glob(".*.tmp"):
                path.unlink(missing_ok=True)


def to_frame(rows: list[dict]):
    """Rows to a DataFrame with the schema's columns and types (JSON columns as strings)."""
    import pandas as pd

    df = pd.DataFrame([complete_row({k: v for k, v in r.items() if k in COLUMN_BY_NAME}) for r in rows], columns=list(COLUMN_NAMES))
    for name in COLUMN_NAMES:
        kind = COLUMN_BY_NAME[name].dtype
        if kind == "json":
            df[name] = df[name].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v, sort_keys=True))
        elif kind == "int":
            df[name] = df[name].astype("Int64")
        elif kind == "float":
            df[name] = df[name].astype("Float64")
        elif kind == "bool":
            df[name] = df[name].astype("boolean")
        elif kind == "str":
            df[name] = df[name].astype("string")
    return df


def consolidate(suite_dir: Path) -> Path:
    """Write `results.parquet` from the cell files (atomically) and return its path."""
    rows = CellStore(suite_dir).rows()
    df = to_frame(rows).sort_values(["method", "label", "context_len", "task", "repeat_group"], na_position="last")
    out = Path(suite_dir) / "results.parquet"
    tmp = out.with_name(f".{out.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    return out


def is_suite_dir(path: Path) -> bool:
    return (path / "results.parquet").is_file() or (path / "cells").is_dir()


def suite_dirs(path: str | Path) -> list[Path]:
    """Suite directories at or under `path` (a suite dir, or a parent of several, at any depth)."""
    root = Path(path)
    if is_suite_dir(root):
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here != root and is_suite_dir(here):
            found.append(here)
            dirnames.clear()  # a suite's cells/ holds no further suites
        dirnames.sort()
    return sorted(found)
