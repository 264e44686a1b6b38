"""`segbench report`: consolidate cell files and print one row per cell (pure pandas, no torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from segbench import store
from segbench.errors import UserError

TABLE_COLUMNS = [
    ("label", "method"),
    ("context_len", "context"),
    ("repeat_group", "rep"),
    ("status", "status"),
    ("peak_prefill_mem_bytes", "peak prefill"),
    ("peak_prefill_over_weights_bytes", "over weights"),
    ("est_peak_prefill_bytes", "est. peak"),
    ("kv_cache_bytes", "stored KV"),
    ("ttft_s", "TTFT s"),
    ("decode_ms_p50", "decode p50 ms"),
    ("decode_tokens_per_s", "decode tok/s"),
    ("attention_backend", "backend"),
]


def load(path: Path, *, warn_skipped: bool = True) -> pd.DataFrame:
    """Consolidate every suite under `path` into its results.parquet and return all rows.

    A file segbench did not write (a foreign cell file, a corrupt parquet) is named in one warning
    line and left out; the other suites are still shown.
    """
    from segbench.errors import warn
    from segbench.schema import COLUMN_NAMES

    path = Path(path)
    dirs = store.suite_dirs(path)
    if not dirs:
        raise UserError(f"no results under {str(path)!r}; run `segbench run SUITE --out {path}` first")
    frames, skipped = [], []
    for d in dirs:
        # A directory with cell files is consolidated afresh; a copied results.parquet alone is read as is,
        # and so is one beside a cells/ folder with nothing of segbench's in it (it is never emptied).
        parquet = d / "results.parquet"
        cells = store.CellStore(d)
        if (d / "cells").is_symlink():
            skipped.append((d / "cells", "a symbolic link"))
        elif (d / "cells").is_dir() and (cells.rows() or not parquet.is_file()):
            try:
                parquet = store.consolidate(d, cells)
            except OSError as e:
                raise UserError(f"cannot write {d / 'results.parquet'} ({e.strerror or e}); report consolidates "
                                f"the cells into it: make {d} writable, or copy it and report the copy") from None
        skipped += cells.skipped
        if not parquet.is_file():
            continue
        try:
            df = pd.read_parquet(parquet)
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, the other suites still show
            skipped.append((parquet, f"unreadable parquet: {type(e).__name__}"))
            continue
        if not store.is_own_parquet_columns(df.columns):
            skipped.append((parquet, "columns outside segbench.schema"))
            continue
        frames.append(df.reindex(columns=list(COLUMN_NAMES)))  # a parquet of an older schema gains empty columns
    if not frames:
        raise UserError(f"no readable results under {str(path)!r}: " + "; ".join(f"{p} ({why})" for p, why in skipped[:3]))
    if skipped and warn_skipped:  # `segbench run` has named them already, right before its table
        warn(store.skipped_note(skipped, "`segbench run` runs their cells again"))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def human_bytes(v) -> str:
    if v is None or pd.isna(v):
        return ""
    v = float(v)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.2f} {unit}"
        v /= 1024
    return ""


def _fmt(col: str, v) -> str:
    if v is None or (not isinstance(v, (list, str)) and pd.isna(v)):
        return ""
    if col.endswith("_bytes"):
        return human_bytes(v)
    if col == "ttft_s":
        return f"{v:.3f}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


# Scores are stored as fractions in [0, 1]; every published RULER / LongBench table prints x100.
SCORE_TITLE = "score x100 [95% CI]"
BUCKET_TITLES = (("score_0_4k", "0-4k x100"), ("score_4_8k", "4-8k x100"), ("score_8k_plus", "8k+ x100"))


def _x100(v) -> str:
    return "" if v is None or pd.isna(v) else f"{100 * float(v):.2f}"


def _score(row: dict) -> str:
    """'25.00 [5.00,70.00]' (x100), starred when the weights are random (chance, not a result)."""
    if row.get("score") is None or pd.isna(row.get("score")):
        return ""
    text = f"{_x100(row['score'])} [{_x100(row['score_ci_low'])},{_x100(row['score_ci_high'])}]"
    return text + ("*" if row.get("model_trained") is False else "")


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The human table: units applied, failures explained in a last column."""
    out = pd.DataFrame({title: [_fmt(col, v) for v in df[col]] for col, title in TABLE_COLUMNS})
    if (df["repeat_group"].fillna(0) == 0).all():
        out = out.drop(columns=["rep"])
    has_task = df["task"].fillna("").astype(str) != ""
    if has_task.any():
        out.insert(2, "task", df["task"].fillna("").astype(str).str.replace("ruler/", "", regex=False).values)
        out.insert(3, SCORE_TITLE, [_score(r) for r in df.to_dict("records")])
        # LongBench-E's length buckets, all three when any row has one (eval.py's 0-4k / 4-8k / 8k+).
        if any(col in df and df[col].notna().any() for col, _ in BUCKET_TITLES):
            for at, (col, title) in enumerate(BUCKET_TITLES, start=4):
                out.insert(at, title, [_x100(v) for v in df[col]] if col in df else [""] * len(df))
    if "suite" in df and df["suite"].nunique() > 1:
        out.insert(0, "suite", df["suite"].astype(str).values)
    details = [("" if s == "ok" else (d or "")) for s, d in zip(df["status"], df["status_detail"])]
    if any(details):
        out["detail"] = [d if d is None or len(d) < 80 else d[:77] + "..." for d in details]
    return out


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        records = json.loads(df.to_json(orient="records"))
        return json.dumps(records, indent=1)
    table = display_frame(df)
    if fmt == "markdown":
        head = "| " + " | ".join(table.columns) + " |"
        sep = "|" + "|".join("---" for _ in table.columns) + "|"
        body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
        return "\n".join([head, sep, *body])
    raise ValueError(fmt)


def print_table(df: pd.DataFrame, title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    random = (df["task"].fillna("").astype(str) != "") & (df["model_trained"] == False)  # noqa: E712
    caption = "* random weights: the score is chance, not a result" if random.any() else None
    table = Table(title=title or None, caption=caption, show_lines=False)
    shown = display_frame(df)
    for col in shown.columns:
        table.add_column(col, justify="left" if col in ("method", "status", "backend", "detail", "suite") else "right",
                         overflow="fold")
    for row, status in zip(shown.itertuples(index=False), df["status"]):
        style = None if status == "ok" else ("yellow" if status in ("skipped", "unsupported") else "red")
        table.add_row(*[str(v) for v in row], style=style)
    # A pipe or a CI log gets the whole row on one line; a terminal keeps its own width.
    console = Console() if sys.stdout.isatty() else Console(width=260)
    console.print(table)
