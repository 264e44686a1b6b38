"""Take the documentation's dashboard screenshots from the real pages on real results.

    .venv/bin/python scripts/screenshots.py                      # results/examples -> docs/*.png
    .venv/bin/python scripts/screenshots.py --results DIR --out DIR --pages Pareto Timeline
    .venv/bin/python scripts/screenshots.py --results results/examples/ruler_cpu --pages Pareto \
        --y score:ruler/niah_single_1 --suffix -ruler          # accuracy against peak memory

Serves the dashboard exactly as `segbench dashboard` does (same command line), opens each page in
headless Chromium through playwright (`?page=<name>`), waits until its figure is drawn, and saves
`<out>/dashboard-<page>.png`. Nothing is drawn from fake data: a page that has nothing to show
(e.g. Timeline on results recorded without memory traces) is an error, exit 2, one line.

Needs the dashboard extra, `pip install playwright` and a Chromium (`apt-get install chromium`;
SEGBENCH_CHROMIUM overrides /usr/bin/chromium). tests/test_dashboard_browser.py drives the
dashboard through the helpers here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from segbench.dashboard_launcher import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1500, "height": 1000}
# The trace role each page's figure must hold before it counts as drawn (see segbench.figures).
DRAWN_ROLE = {"Pareto": "points", "Scaling": "measured", "Timeline": "timeline", "Compare runs": "ratio"}
# What each page says when it has nothing to draw (dashboard/page_*.py). Elements arrive one by one,
# so "an info box and no chart yet" does not mean there will be none: wait for one of these.
EMPTY_MARKERS = (
    "No memory traces",
    "Pareto needs two measured metrics",
    "No ok cell measured anything",
    "Comparing needs two runs",
    "No results found",
)


class ScreenshotError(RuntimeError):
    """Something the user can fix (no Chromium, no results, nothing to draw): one line, exit 2."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str:
    found = CHROMIUM if Path(CHROMIUM).exists() else shutil.which(CHROMIUM)
    if not found:
        raise ScreenshotError(
            f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SEGBENCH_CHROMIUM)"
        )
    return found


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ScreenshotError(f"streamlit exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.5)
    raise ScreenshotError(
        f"streamlit did not answer on port {port} in {timeout:.0f} s: {log.read_text()[-2000:]}"
    )


@contextlib.contextmanager
def serve(results_dirs: list[str | Path], log: Path | None = None, timeout: float = 120) -> Iterator[str]:
    """The dashboard on a free loopback port over `results_dirs`; always stopped afterwards."""
    from segbench import dashboard_launcher

    port = free_port()
    own_log = log is None
    log = Path(tempfile.mkstemp(prefix="segbench-streamlit-", suffix=".log")[1]) if log is None else log
    env = {**os.environ, "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"}  # nothing to hot-reload
    with log.open("w") as out:
        proc = subprocess.Popen(
            dashboard_launcher.build_command([str(d) for d in results_dirs], port),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_healthy(proc, port, log, timeout)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if own_log:
            log.unlink(missing_ok=True)


@contextlib.contextmanager
def browser() -> Iterator[object]:
    """A headless Chromium driven by playwright (its own browser download cannot work offline)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ScreenshotError("playwright is not installed: pip install playwright") from None
    path = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def open_page(b, url: str, page: str, timeout_ms: int = 120_000, query: str = ""):
    """A new tab on `page`, returned once its figure holds a trace of DRAWN_ROLE[page], or once the
    page says it has nothing to draw (EMPTY_MARKERS): the caller checks which."""
    tab = b.new_page(viewport=VIEWPORT)
    tab.goto(f"{url}?page={page.replace(' ', '+')}{query}", wait_until="domcontentloaded", timeout=60_000)
    role = DRAWN_ROLE.get(page, "")
    tab.wait_for_function(
        """([role, markers]) => {
            const drawn = [...document.querySelectorAll('.js-plotly-plot')].some(
                g => g.data && g.data.some(t => t.meta && t.meta.role === role));
            const text = document.body.innerText;
            return drawn || markers.some(m => text.includes(m));
        }""",
        arg=[role, list(EMPTY_MARKERS)],
        timeout=timeout_ms,
    )
    tab.wait_for_timeout(800)  # let the chart finish its first paint
    return tab


def figure_traces(tab, index: int = 0) -> list[dict]:
    """The plotly traces of the index-th figure on the page: role, name, point count."""
    return tab.evaluate(
        """(i) => { const g = document.querySelectorAll('.js-plotly-plot')[i];
            return g ? g.data.map(t => ({role: t.meta && t.meta.role, name: t.name,
                                          n: t.x ? t.x.length : 0, onFront: t.meta && t.meta.on_front}))
                     : []; }""",
        index,
    )


def has_figure(tab, page: str) -> bool:
    return any(t["role"] == DRAWN_ROLE.get(page) for t in figure_traces(tab))


def take(results: list[Path], out: Path, pages: list[str], query: str = "", suffix: str = "") -> list[Path]:
    for r in results:
        if not r.exists():
            raise ScreenshotError(f"no such results directory: {r}")
    shots: dict[Path, bytes] = {}
    with serve(results) as url, browser() as b:
        for page in pages:
            tab = open_page(b, url, page, query=query)
            if not has_figure(tab, page):
                text = tab.evaluate("() => document.body.innerText")
                said = next((line for line in text.splitlines() if any(m in line for m in EMPTY_MARKERS)), "")
                where = ", ".join(map(str, results))
                raise ScreenshotError(f"the {page} page has nothing to draw on {where}: {said.strip()}")
            shots[out / f"dashboard-{page.lower().replace(' ', '-')}{suffix}.png"] = tab.screenshot()
            tab.close()
    # Written only when every page was drawn: a half-updated docs/ would mix two data sets.
    out.mkdir(parents=True, exist_ok=True)
    for path, png in shots.items():
        path.write_bytes(png)
    return list(shots)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", nargs="+", type=Path, default=[ROOT / "results" / "examples"])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--pages", nargs="+", default=["Pareto", "Timeline"], choices=list(DRAWN_ROLE))
    ap.add_argument("--x", help="Pareto x axis (a metric key, e.g. peak_prefill_mem_bytes)")
    ap.add_argument("--y", help="Pareto y axis (a metric key, e.g. score:ruler/niah_single_1)")
    ap.add_argument("--suffix", default="", help="added to the file names: dashboard-pareto<suffix>.png")
    args = ap.parse_args(argv)
    from urllib.parse import quote

    query = "".join(f"&{k}={quote(v)}" for k, v in (("x", args.x), ("y", args.y)) if v)
    try:
        written = take(args.results, args.out, args.pages, query, args.suffix)
    except ScreenshotError as e:
        print(f"screenshots: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
