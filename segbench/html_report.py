"""`segbench report DIR --html out.html`: one self-contained HTML file with the main figures.

plotly.js is inlined once (include_plotlyjs=True on the first figure) so the file opens offline,
e.g. copied off a cluster. plotly itself is imported lazily: the core must run without it.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import pandas as pd

from segbench import analysis as an
from segbench import figures, runs
from segbench.schema import STATUSES

# (x, y) pairs worth a Pareto figure, drawn when both have data; accuracy pairs are added per task.
PARETO_PAIRS: tuple[tuple[str, str], ...] = (
    ("peak_prefill_mem_bytes", "ttft_s"),
    ("peak_prefill_over_weights_bytes", "ttft_s"),
    ("kv_cache_bytes", "decode_ms_p50"),
)
SCALING_METRICS: tuple[str, ...] = ("peak_prefill_mem_bytes", "kv_cache_bytes", "ttft_s", "decode_ms_p50")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; }
.chance { background: #fff0f0; border: 2px solid #c00000; color: #900; padding: 0.8em 1em; font-weight: bold; }
.notes { background: #fffbe6; border: 1px solid #e6c200; padding: 0.5em 1em; }
table.status { border-collapse: collapse; margin: 1em 0; } table.status td, table.status th {
  border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
"""


SINGLE_PROCESS_NOTE = (
    "Each cell ran in one process (workload.process_repeats = 1): TTFT error bars are the min–max of "
    "the timed prefills inside that process, not a confidence interval over processes. A gap smaller "
    "than those bars is not decisive; run with process_repeats >= 2 for 95% intervals."
)


def _figures(df: pd.DataFrame) -> list[tuple[str, object]]:
    """(heading, figure) for every Pareto pair and scaling metric that has data."""
    available = set(an.available_metrics(df, an.PARETO_AXES))
    pairs = [p for p in PARETO_PAIRS if set(p) <= available]
    pairs += [("peak_prefill_mem_bytes", k) for k in sorted(available) if an.is_score_key(k)]
    out: list[tuple[str, object]] = []
    for x, y in pairs:
        heading = f"Pareto: {an.metric_info(y).label} vs {an.metric_info(x).label}"
        out.append((heading, figures.pareto_figure(an.pareto_view(df, x, y))))
    score_keys = sorted(k for k in available if an.is_score_key(k))
    for key in [k for k in SCALING_METRICS if k in available] + score_keys:
        out.append(
            (f"Scaling: {an.metric_info(key).label}", figures.scaling_figure(an.scaling_view(df, key)))
        )
    return out


def _status_table(df: pd.DataFrame) -> str:
    """Cells per series and status, failures included: what did not run is part of the result."""
    if df.empty:
        return "<p>No cells.</p>"
    counts = pd.crosstab(an.series_names(df), df["status"].fillna("?"))
    ordered = [s for s in STATUSES if s in counts.columns] + sorted(set(counts.columns) - set(STATUSES))
    return counts[ordered].to_html(classes="status", escape=True, index_names=False)


def _provenance(df: pd.DataFrame, source: str | Path | None) -> str:
    """Which directory, host and commit the numbers come from: a copied report must say."""
    table = runs.run_table(df)
    items = []
    for r in table.to_dict("records"):
        where = r["source"] or (str(source) if source is not None else "rows handed in directly")
        shas = sorted(set(df.loc[df["source"].fillna("") == r["source"], "git_sha"].dropna()) - {""})
        dirty = df.loc[df["source"].fillna("") == r["source"], "git_dirty"]
        commit = ", ".join(shas) if shas else "unknown"
        if bool((dirty == True).any()):  # noqa: E712 - nullable boolean column
            commit += " (uncommitted changes)"
        items.append(
            f"<li><b>{html.escape(r[runs.RUN])}</b>: {r['cells']} cells from <code>{html.escape(where)}</code>"
            f" · host {html.escape(r['hosts'] or 'unknown')} · commit <code>{html.escape(commit)}</code></li>"
        )
    return "<ul class='meta'>" + "".join(items) + "</ul>" if items else ""


def write_html(
    df: pd.DataFrame, path: str | Path, *, title: str = "segbench report", source: str | Path | None = None
) -> Path:
    """Write the report for result rows `df` (as load_results returns, or the store's) to `path`.

    `source` names the results directory the rows came from. The store's rows carry no `source`
    column; when `source` is given they are re-read from it with load_results, so each suite
    directory is its own run (directory, start, commit) in the figures and the header.
    """
    figures.require_plotly()  # fail before writing anything, naming the extra to install
    if source is not None and ("source" not in df.columns or not df["source"].fillna("").astype(bool).any()):
        reread = an.load_results([Path(source)])
        if len(reread) == len(df):
            df = reread
    df = an.conform(df)  # the store's frame or load_results': same columns and types either way
    sections: list[str] = []
    figs = _figures(df)
    for i, (heading, fig) in enumerate(figs):
        body = fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%")
        sections.append(f"<h2>{html.escape(heading)}</h2>\n{body}")
    if not figs:
        sections.append("<p>No ok cell measured anything plottable; see the status table.</p>")
    head = [f"<h1>{html.escape(title)}</h1>"]
    head.append(
        f"<p class='meta'>{len(df)} cells · generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
        + (f" from <code>{html.escape(str(source))}</code>" if source is not None else "")
        + "</p>"
    )
    head.append(_provenance(df, source))
    if df["ttft_s"].notna().any() and not (pd.to_numeric(df["repeat_group"], errors="coerce") > 0).any():
        head.append(f"<p class='notes'>{html.escape(SINGLE_PROCESS_NOTE)}</p>")
    if an.chance_accuracy(df):
        head.append(
            f"<p class='chance'>⚠ {html.escape(figures.CHANCE_WARNING)} (model_trained is false).</p>"
        )
    notes = df.attrs.get(an.LOAD_NOTES, [])
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        head.append(f"<div class='notes'>Problems found while loading:<ul>{items}</ul></div>")
    head.append("<h2>Cells by status</h2>" + _status_table(df))
    document = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(head + sections)
        + "\n</body></html>\n"
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document, encoding="utf-8")
    return out
