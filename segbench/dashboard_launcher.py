"""`segbench dashboard`: start the Streamlit app on some result directories.

Streamlit is an optional extra, so this module never imports it: it only checks that it is
installed and runs it in a child process with the same interpreter.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

INSTALL_HINT = "pip install 'segbench[dashboard]'"


def app_path() -> Path:
    """dashboard/app.py as installed (package segbench.dashboard), found without importing it."""
    spec = importlib.util.find_spec("segbench.dashboard")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("segbench.dashboard is not installed with this segbench")
    return Path(spec.origin).parent / "app.py"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def build_command(results_dirs: Sequence[str], port: int | None, host: str = "127.0.0.1") -> list[str]:
    """The `python -m streamlit run` command line launch() runs (tests start it themselves)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path())]
    if port is not None:
        cmd += ["--server.port", str(port)]
    cmd += [
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        # Results are read, not developed: hide Deploy, Rerun and Clear cache (the page has its own
        # Reload button). .streamlit/config.toml says the same for a plain `streamlit run`.
        "--client.toolbarMode",
        "viewer",
    ]
    # Absolute paths: the app must find them whatever directory streamlit considers current.
    return cmd + ["--", *(str(Path(d).resolve()) for d in results_dirs)]


def launch(results_dirs: list[str], port: int | None, host: str = "127.0.0.1") -> int:
    """Serve the dashboard until interrupted; returns the exit status for the CLI."""
    if importlib.util.find_spec("streamlit") is None:
        print(f"segbench dashboard needs streamlit and plotly: {INSTALL_HINT}", file=sys.stderr)
        return 2
    missing = [d for d in results_dirs if not Path(d).exists()]
    if missing:
        print(f"segbench dashboard: no such results directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    if not is_loopback(host):
        print(
            f"warning: serving the dashboard on {host}: anyone who can reach this address can read "
            "these results (including host names and paths); there is no authentication.",
            file=sys.stderr,
        )
    proc = subprocess.Popen(build_command(results_dirs, port, host))
    # A SIGTERM to segbench (kill, a job scheduler) must not orphan the server still holding the port.
    previous = _on_sigterm(lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reaches the child too; give it a moment to shut its server down cleanly.
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _on_sigterm(previous)


def _on_sigterm(handler):
    """Install a SIGTERM handler, returning the previous one (a no-op outside the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, signal.SIG_DFL if handler is None else handler)
    except ValueError:  # signal handlers can only be set from the main thread
        return None


# Headless Chromium for the screenshots script and the browser test: Debian's binary (a test tool's
# own browser download cannot work offline), with the background services off, whose connections
# a closed network refuses many at a time.
CHROMIUM = os.environ.get("SEGBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
