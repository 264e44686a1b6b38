"""Reliability: no cell outlives its runner, nothing outside --out is written or removed, a bad file
never blocks a sweep or a report, and every user mistake is one line with exit code 2.

Faults are injected here (signals, garbage files, read-only directories), never by hand.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segbench import store
from segbench.store import CellStore

from .helpers import write_suite

# ----------------------------------------------------------------------------- processes


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie holds no memory; init reaps it


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP], ids=["KILL", "TERM", "HUP"])
def test_cells_and_forkserver_die_with_the_runner(tmp_path, sig):
    suite = write_suite(tmp_path, name="die", limits={"timeout_s": 600},
                        methods=[{"method": "full", "label": "quick"},
                                 {"method": "fault", "label": "sleeps", "params": {"fault": "sleep"}}])
    out = tmp_path / "out"
    runner = subprocess.Popen(
        [sys.executable, "-m", "segbench.cli", "run", str(suite), "--out", str(out), "--no-progress", "--no-report"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        # Wait until the quick cell is saved and the sleeping one runs (a grandchild: runner -> forkserver -> cell).
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            below = _descendants(runner.pid)
            if len(list((out / "die" / "cells").glob("*.json"))) == 1 and len(below) >= 2:
                break
            assert runner.poll() is None, runner.stderr.read().decode()
            time.sleep(0.1)
        else:
            pytest.fail("the sleeping cell never started")
        time.sleep(0.5)
        below = _descendants(runner.pid)
        runner.send_signal(sig)
        code = runner.wait(timeout=60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in below):
            time.sleep(0.1)
        assert not [p for p in below if _alive(p)], "a process of the sweep outlived its runner"
        if sig != signal.SIGKILL:  # handled like Ctrl-C: 128 + the signal, finished cells saved
            assert code == 128 + sig
            assert f"interrupted ({signal.Signals(sig).name})" in runner.stderr.read().decode()
        rows = CellStore(out / "die").rows()
        assert [(r["label"], r["status"]) for r in rows] == [("quick", "ok")]
    finally:
        if runner.poll() is None:
            runner.kill()
        for p in _descendants(runner.pid):
            os.kill(p, signal.SIGKILL)
