"""The dashboard as a user gets it: `segbench dashboard`'s command, served, drawn by headless Chromium.

Also the launcher's own behaviour (no streamlit, non-loopback host), which needs no browser.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segbench import dashboard_launcher as dl
from segbench.schema import empty_row

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM, CHROMIUM_ARGS = dl.CHROMIUM, dl.CHROMIUM_ARGS
GIB = 2**30


# ------------------------------------------------------------------------------------ launcher


def test_launch_without_streamlit_names_the_extra(monkeypatch, capsys):
    real = dl.importlib.util.find_spec
    monkeypatch.setattr(
        dl.importlib.util, "find_spec", lambda name: None if name == "streamlit" else real(name)
    )
    assert dl.launch(["results"], None) == 2
    assert "pip install 'segbench[dashboard]'" in capsys.readouterr().err


def test_launch_warns_off_loopback_and_runs_the_app(monkeypatch, tmp_path, capsys):
    pytest.importorskip("streamlit", reason="launch() checks for streamlit before running it")
    ran = []

    class FakeServer:
        def __init__(self, cmd):
            ran.append(cmd)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(dl.subprocess, "Popen", FakeServer)
    assert dl.launch([str(tmp_path)], 8601, host="0.0.0.0") == 0
    assert "warning" in capsys.readouterr().err
    cmd = ran[0]
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == ROOT / "dashboard" / "app.py"
    assert (
        cmd[cmd.index("--server.port") + 1] == "8601" and cmd[cmd.index("--server.address") + 1] == "0.0.0.0"
    )
    assert cmd[cmd.index("--") + 1 :] == [str(tmp_path.resolve())]
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "viewer"  # no Deploy button for readers
    assert dl.launch([str(tmp_path)], None) == 0
    assert "warning" not in capsys.readouterr().err  # loopback by default
    assert "--server.port" not in ran[1]
    assert dl.launch([str(tmp_path / "typo")], None) == 2


def test_launch_stops_the_server_on_sigterm(monkeypatch, tmp_path):
    # `kill <segbench pid>` must not leave a Streamlit server holding the port.
    monkeypatch.setattr(dl.importlib.util, "find_spec", lambda name: object())
    pid_file = tmp_path / "server.pid"
    sleeper = [
        sys.executable,
        "-c",
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)",
    ]
    monkeypatch.setattr(dl, "build_command", lambda *a, **k: sleeper)
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        started = time.monotonic()
        assert dl.launch([], None) == -signal.SIGTERM
        assert time.monotonic() - started < 30
    finally:
        timer.cancel()
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # reaped: gone
    assert signal.getsignal(signal.SIGTERM) == before


# ------------------------------------------------------------------------------------ browser


def _screenshots():
    """scripts/screenshots.py as a module: the tests drive the dashboard with its helpers."""
    spec = importlib.util.spec_from_file_location("segbench_screenshots", ROOT / "scripts" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shots = _screenshots()


def _cell(label: str, mem_gib: float | None, ttft: float | None, status: str = "ok", ctx: int = 8192) -> dict:
    r = empty_row()
    r.update(
        suite="browser",
        method=label,
        label=label,
        params='{"note": "quoted \\"text\\""}',
        model="tiny-random",
        model_trained=False,
        dtype="bfloat16",
        device="cuda",
        context_len=ctx,
        decode_tokens=16,
        task="",
        repeat_group=0,
        config_hash=f"{label}-{ctx}",
        status=status,
        status_detail=None if status == "ok" else "torch.OutOfMemoryError: CUDA out of memory",
        peak_prefill_mem_bytes=None if mem_gib is None else int(mem_gib * GIB),
        est_peak_prefill_bytes=int((mem_gib or 12) * GIB),
        weights_bytes=GIB,
        ttft_s=ttft,
        hostname="node-01",
        git_sha="0123456789abcdef0123456789abcdef01234567",
        started_at="2026-11-30T09:00:00Z",
    )
    return r


# At 8K, memory vs TTFT worked out by hand: longgen (7 GiB, 2.0 s) is beaten by snapkv (6, 1.2)
# and segmented (4, 1.5); the other four trade memory for time, so the front has 4 points. The OOM
# cell has no numbers and must not be drawn, but must be named. At 4K every cell is ok.
CELLS = [
    _cell("full", 10, 1.0),
    _cell("snapkv", 6, 1.2),
    _cell("segmented", 4, 1.5),
    _cell("streamingllm", 3, 3.0),
    _cell("longgen", 7, 2.0),
    _cell("full-fp32", None, None, status="oom"),
] + [
    _cell(label, mem / 2, ttft / 2, ctx=4096)
    for label, mem, ttft in (("full", 6, 1.0), ("segmented", 3, 1.5))
]
EXPECTED_FRONT = 4


def _write_run(suite_dir: Path, cells: list[dict], traces: bool) -> None:
    from tests.test_analysis import synthetic_trace, write_trace

    (suite_dir / "cells").mkdir(parents=True)
    for cell in cells:
        (suite_dir / "cells" / f"{cell['config_hash']}.json").write_text(json.dumps(cell))
        if traces and cell["context_len"] == 8192:
            peak = cell["peak_prefill_mem_bytes"] or 12 * GIB
            shape = "flat" if cell["method"] == "segmented" else "climb"
            write_trace(
                suite_dir, synthetic_trace(cell["config_hash"], GIB, peak, cell["ttft_s"] or 0.6, shape)
            )


def _require_browser():
    pytest.importorskip(
        "streamlit", reason="the dashboard extra is not installed: pip install 'segbench[dashboard]'"
    )
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SEGBENCH_CHROMIUM)")


def _tick_labels(tab, axis: str = "x") -> list[str]:
    """The tick labels plotly drew on the first figure's `axis` axes (groups xtick, x2tick, ...)."""
    return tab.evaluate(
        """(axis) => [...document.querySelector('.js-plotly-plot').querySelectorAll('g')]
               .filter(g => new RegExp('^' + axis + '[0-9]*tick$').test(g.getAttribute('class') || ''))
               .map(g => g.textContent).filter(t => t)""",
        axis,
    )


def _axis_titles(tab, axis: str) -> list[str]:
    """The titles plotly drew on the first figure's `axis` axes (classes xtitle, x2title, ...)."""
    return tab.evaluate(
        """(axis) => [...document.querySelector('.js-plotly-plot').querySelectorAll('text')]
               .filter(t => new RegExp('^' + axis + '[0-9]*title$').test(t.getAttribute('class') || ''))
               .map(t => t.textContent)""",
        axis,
    )


@pytest.mark.browser
@pytest.mark.slow  # 30-120 s on 2 busy cores: Chromium parses Streamlit's and plotly's bundles
def test_browser_failures_two_runs_and_a_timeline(tmp_path):
    """Two runs of one suite (the second a day later), one with an OOM and memory traces."""
    _require_browser()
    results = tmp_path / "results"
    _write_run(results / "gpu_a" / "browser", CELLS, traces=True)
    later = [c | {"started_at": "2026-12-01T09:00:00Z"} for c in CELLS if c["status"] == "ok"]
    _write_run(results / "gpu_b" / "browser", later, traces=False)
    ARTIFACTS.mkdir(exist_ok=True)
    with shots.serve([results], log=tmp_path / "streamlit.log") as url, shots.browser() as b:
        pareto = shots.open_page(b, url, "Pareto")
        traces = shots.figure_traces(pareto)
        text = pareto.evaluate("() => document.body.innerText")
        deploy = pareto.locator('[data-testid="stAppDeployButton"]').count()
        pareto.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        title = pareto.locator(".js-plotly-plot .gtitle").first.text_content()
        hover = pareto.evaluate(
            "() => document.querySelector('.js-plotly-plot').data.filter(t => t.hovertext)"
            ".map(t => t.hovertext.join(' ')).join(' ')"
        )
        scaling = shots.open_page(b, url, "Scaling")
        scaling_ticks = _tick_labels(scaling)
        scaling_title = " ".join(_axis_titles(scaling, "x"))
        timeline = shots.open_page(b, url, "Timeline")
        lines = [t for t in shots.figure_traces(timeline) if t["role"] == "timeline"]
        drawn_paths = timeline.evaluate(
            "() => [...document.querySelectorAll('.js-plotly-plot .scatterlayer path.js-line')]"
            ".filter(p => (p.getAttribute('d') || '').length > 20).length"
        )
        timeline.screenshot(path=str(ARTIFACTS / "dashboard-timeline.png"))
    # Pareto: the front at 8K pools both runs (equal points are both on it), each run named apart.
    fronts = [t for t in traces if t["role"] == "pareto-front"]
    assert sorted(t["n"] for t in fronts) == [2 * 2, 2 * EXPECTED_FRONT]  # 4K: full and segmented trade off
    points = {t["name"] for t in traces if t["role"] == "points"}
    assert "full · gpu_a/browser · 2026-11-30 09:00 · 0123456" in points
    assert "full · gpu_b/browser · 2026-12-01 09:00 · 0123456" in points
    assert not any(name.startswith("full-fp32") for name in points)  # the OOM cell: not drawn
    assert "Pareto front" in title
    # ... but named, with why, where the user looks.
    assert "Not on the plot" in text and "full-fp32" in text and "(OOM)" in text
    assert '"quoted' in hover and "&quot;" not in hover  # escaped once
    assert deploy == 0  # toolbarMode viewer: no Deploy button
    # Scaling: the x axis is labelled at the measured lengths.
    assert {"4K", "8K"} <= set(scaling_ticks) and scaling_title.startswith("Context length")
    # Timeline: one line per method traced at 8K, drawn as SVG paths.
    assert {t["name"] for t in lines} >= {"full · gpu_a/browser · 2026-11-30 09:00 · 0123456"}
    assert len(lines) == 6 and all(t["n"] > 10 for t in lines) and drawn_paths >= 6
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


@pytest.mark.browser
@pytest.mark.slow
def test_browser_shipped_example_without_failures(tmp_path):
    """The committed example (no cell failed) as a fresh clone shows it, through the screenshot script."""
    _require_browser()
    examples = ROOT / "results" / "examples" / "cpu_smoke"  # one run, 1K-4K, nothing failed
    with shots.serve([examples], log=tmp_path / "streamlit.log") as url, shots.browser() as b:
        scaling = shots.open_page(b, url, "Scaling")
        ticks = _tick_labels(scaling)
        titles = _axis_titles(scaling, "x") + _axis_titles(scaling, "y")
        pareto = shots.open_page(b, url, "Pareto")
        text = pareto.evaluate("() => document.body.innerText")
    assert ticks == ["1K", "2K", "4K"]
    assert titles == ["Context length (tokens, log2)", "Peak prefill memory (MiB)"]
    assert "Not on the plot" not in text and "one process" in text
    assert shots.main(["--results", str(examples), "--out", str(tmp_path / "docs"), "--pages", "Pareto"]) == 0
    assert (tmp_path / "docs" / "dashboard-pareto.png").stat().st_size > 10_000


def test_core_modules_import_no_ui_package():
    # The CLI imports these on a bare GPU image: plotly and streamlit may only load when used.
    code = (
        "import sys, segbench.dashboard_launcher as d, segbench.html_report, segbench.figures, segbench.analysis,"
        " segbench.timeline, segbench.timeline_figure, segbench.runs, segbench.metrics, segbench.loading;"
        "d.app_path(); print(sorted(m for m in ('streamlit', 'plotly') if m in sys.modules))"
    )
    out = subprocess.run([dl.sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ HTML report


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """Written once for the module: nine figures take seconds on 2 cores."""
    pytest.importorskip(
        "plotly", reason="the dashboard extra is not installed: pip install 'segbench[dashboard]'"
    )
    from segbench import analysis, html_report
    from tests.test_dashboard_apptest import synthetic_rows, write_suite

    root = tmp_path_factory.mktemp("report")
    write_suite(root / "results" / "run", synthetic_rows())
    return html_report.write_html(analysis.load_results([root / "results"]), root / "out" / "report.html")


def test_html_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    assert "<script src=" not in text  # nothing fetched: it must open offline
    assert text.count("Plotly.newPlot(") == 9  # 4 Pareto + 5 scaling figures, with data
    assert len(re.findall(r"plotly\.js v\d", text)) == 1  # the library is inlined once
    assert "Pareto: TTFT vs Peak prefill memory" in text and "Scaling: Accuracy (niah)" in text
    assert "class='chance'" in text  # random weights: said once on the page, and in figure titles
    status = text[text.index("Cells by status") : text.index("</table>")]
    assert "oom" in status and "timeout" in status


def test_html_report_without_plotly_names_the_extra(monkeypatch, tmp_path):
    from segbench import figures, html_report
    from segbench.analysis import empty_results

    for name in ("plotly", "plotly.graph_objects", "plotly.subplots"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import plotly...` raise ImportError
    with pytest.raises(
        figures.MissingDashboardDependency, match=re.escape("pip install 'segbench[dashboard]'")
    ):
        html_report.write_html(empty_results(), tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.browser
@pytest.mark.slow
def test_html_report_draws_offline_in_chromium(report):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install playwright"
    )
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SEGBENCH_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(offline=True)  # a report copied off a cluster has no network
            page = context.new_page()
            page.goto(report.as_uri(), wait_until="load", timeout=120_000)
            drawn = page.evaluate(
                "() => [...document.querySelectorAll('.js-plotly-plot')].map(g => (g.data || []).length)"
            )
        finally:
            browser.close()
    assert len(drawn) == 9 and all(n > 0 for n in drawn)


def test_html_report_header_and_no_phantom_failures(tmp_path):
    """The shipped example through `segbench report --html`: every cell ok, so no failure strip and
    no rows of None; the header names the source directory, host and commit."""
    pytest.importorskip(
        "plotly", reason="the dashboard extra is not installed: pip install 'segbench[dashboard]'"
    )
    suite = tmp_path / "results" / "cpu_smoke"
    shutil.copytree(ROOT / "results" / "examples" / "cpu_smoke", suite)  # report rewrites its parquet
    out = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "segbench.cli", "report", str(tmp_path / "results"), "--html", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    head = text[: text.index("Cells by status")]
    # The header names what the rows say (the example is re-measured from time to time).
    rows = [json.loads(f.read_text()) for f in sorted((suite / "cells").glob("*.json"))]
    sha, host = rows[0]["git_sha"], rows[0]["hostname"]
    start = min(r["started_at"] for r in rows)[:16].replace("T", " ")
    assert str(suite) in head and f"host {host}" in head and sha in head
    assert f"cpu_smoke · {start} · {sha[:7]}" in head and f"{len(rows)} cells" in head
    assert "one process" in head  # process_repeats = 1: the TTFT bars are said to be in-process spread
    assert '"role":"failure"' not in text  # no failure strip: nothing failed
    assert "Peak prefill memory (MiB)" in text and "Context length (tokens, log2)" in text
