"""The launcher-independent parts of a sweep: GPU slots on a multi-GPU machine, order, skip-after-OOM
and retries when cells run in parallel, the suite's launcher section, and missing engines.

Everything here but one test runs without a cell process: a fake launcher (or a fake run_cell)
stands in for the engine, so the bookkeeping is tested on its own.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from segbench import runner
from segbench.cli import main
from segbench.errors import UserError
from segbench.launchers import Finished, Launcher
from segbench.launchers.local import LocalLauncher, gpu_groups
from segbench.runner import base_row, launch_order, run_cell, run_suite
from segbench.store import CellStore
from segbench.suite import Cell, LauncherSpec, Suite, load_suite

from .helpers import write_suite
from .launcher_helpers import PLUGINS

# ------------------------------------------------------------------------- GPU slots (local)


def test_gpu_groups_one_slot_per_group_of_gpus():
    assert gpu_groups("cuda", 4, 1, None, None) == ["0", "1", "2", "3"]
    assert gpu_groups("cuda", 4, 2, None, None) == ["0,1", "2,3"]
    assert gpu_groups("cuda", 3, 2, None, None) == ["0,1"]  # the odd GPU idles rather than being shared
    assert gpu_groups("cuda", 8, 1, 3, None) == ["0", "1", "2"]
    assert gpu_groups("cuda", 8, 1, None, "2,5,7") == ["2", "5", "7"]  # the user's own narrowing holds


def test_gpu_groups_stay_sequential_without_several_gpus():
    assert gpu_groups("cuda", 1, 1, None, None) == [None]
    assert gpu_groups("cuda", 0, 1, None, None) == [None]
    assert gpu_groups("cpu", 8, 1, None, None) == [None]
    assert gpu_groups("cpu", 0, 1, 2, None) == [None, None]  # CPU cells in parallel only when asked
    with pytest.raises(UserError, match="--gpus-per-cell 4"):
        gpu_groups("cuda", 2, 4, None, None)


def _fake_cuda_suite(tmp_path: Path, contexts=(32, 64, 128)) -> Suite:
    path = write_suite(tmp_path, device="cuda", dtype="bfloat16", contexts=list(contexts),
                       methods=[{"method": "full", "label": "a"}, {"method": "full", "label": "b", "params": {"prefill": "chunked"}}])
    return load_suite(path)


def test_local_launcher_runs_one_cell_per_gpu_group(tmp_path, monkeypatch):
    """4 fake GPUs, 2 per cell: two cells at a time, never sharing a GPU, longest contexts first."""
    suite = _fake_cuda_suite(tmp_path)
    lock = threading.Lock()
    running: set[str] = set()
    seen: list[tuple[int, str | None]] = []
    overlaps: list[set[str]] = []

    def fake_run_cell(cell, suite, workdir, *, visible_devices=None, stop=None):
        with lock:
            seen.append((cell.context_len, visible_devices))
            mine = set(visible_devices.split(","))
            if running & mine:
                overlaps.append(running & mine)
            running.update(mine)
        time.sleep(0.05)
        with lock:
            running.difference_update(mine)
        row = base_row(cell)
        row.update(status="ok", hostname="fake")
        return row

    monkeypatch.setattr("segbench.launchers.local.run_cell", fake_run_cell)
    monkeypatch.setattr("segbench.launchers.local.warm_forkserver", lambda: None)  # no cell process here
    monkeypatch.setattr(runner, "check_device", lambda suite: None)  # no CUDA here, and none is touched
    launcher = LocalLauncher(suite, LauncherSpec(gpus_per_cell=2), gpu_count=4)
    assert launcher.slots() == 2
    summary = run_suite(suite, tmp_path / "out", progress=False, launcher=launcher)
    assert summary.statuses == {"ok": 6}
    assert not overlaps
    assert {devices for _, devices in seen} == {"0,1", "2,3"}
    assert [ctx for ctx, _ in seen[:2]] == [128, 128]  # longest first when cells run in parallel
    assert {r["launcher"] for r in CellStore(summary.suite_dir).rows()} == {"local"}


def test_the_cell_process_gets_its_gpus(tmp_path):
    """CUDA_VISIBLE_DEVICES is set inside the cell process, whatever its forkserver inherited."""
    suite = load_suite(write_suite(tmp_path, plugins=PLUGINS, methods=[{"method": "report_env"}]))
    row = run_cell(suite.cells()[0], suite, tmp_path, visible_devices="3,5")
    assert row["status"] == "unsupported"
    assert row["status_detail"] == "CUDA_VISIBLE_DEVICES=3,5"
    assert row["hostname"]


# ------------------------------------------------------------------------- order and bookkeeping


def test_long_contexts_first_only_in_parallel(tmp_path):
    cells = _fake_cuda_suite(tmp_path).cells()
    assert launch_order(cells, parallel=False) == cells
    ordered = launch_order(cells, parallel=True)
    assert [(c.label, c.context_len) for c in ordered] == [
        ("a", 128), ("b", 128), ("a", 64), ("b", 64), ("a", 32), ("b", 32)]


class ScriptedLauncher(Launcher):
    """An engine that queues everything and finishes the shortest context first (as a backfilling
    scheduler may), with outcomes from a script: (label, context) -> status, or a list of statuses
    for successive attempts."""

    name = "scripted"

    def __init__(self, suite: Suite, script: dict, slots: int = 100) -> None:
        super().__init__(suite, suite.spec.launcher)
        self.script = {k: list(v) if isinstance(v, list) else [v] for k, v in script.items()}
        self._slots = slots
        self.queued: list[Cell] = []
        self.submitted: list[tuple[str, int]] = []
        self.cancelled: list[tuple[str, int]] = []

    def slots(self) -> int:
        return self._slots

    def submit(self, cells: Sequence[Cell]) -> None:
        self.queued.extend(cells)
        self.submitted.extend((c.label, c.context_len) for c in cells)

    def wait(self) -> list[Finished]:
        cell = min(self.queued, key=lambda c: c.context_len)
        self.queued.remove(cell)
        outcomes = self.script.get((cell.label, cell.context_len), ["ok"])
        row = base_row(cell)
        row.update(status=outcomes.pop(0) if len(outcomes) > 1 else outcomes[0])
        return [(cell, row)]

    def cancel(self, cell: Cell) -> bool:
        self.queued.remove(cell)  # nothing here has started: every queued cell can be withdrawn
        self.cancelled.append((cell.label, cell.context_len))
        return True

    def close(self) -> None:
        pass


def _statuses(suite_dir: Path) -> dict[tuple[str, int], str]:
    return {(r["label"], r["context_len"]): r["status"] for r in CellStore(suite_dir).rows()}


def test_oom_withdraws_queued_longer_cells_of_that_entry(tmp_path):
    suite = load_suite(write_suite(tmp_path, contexts=[32, 64, 128, 256],
                                   methods=[{"method": "full", "label": "a"}, {"method": "full", "label": "b", "params": {"prefill": "chunked"}}]))
    engine = ScriptedLauncher(suite, {("a", 64): "oom"})
    summary = run_suite(suite, tmp_path / "out", progress=False, launcher=engine)
    got = _statuses(summary.suite_dir)
    assert got == {("a", 32): "ok", ("a", 64): "oom", ("a", 128): "skipped", ("a", 256): "skipped",
                   ("b", 32): "ok", ("b", 64): "ok", ("b", 128): "ok", ("b", 256): "ok"}
    assert sorted(engine.cancelled) == [("a", 128), ("a", 256)]
    assert engine.submitted[:2] == [("a", 256), ("b", 256)]  # all at once, longest first
    skipped = next(r for r in CellStore(summary.suite_dir).rows() if r["status"] == "skipped")
    assert skipped["status_detail"] == "a ran out of memory at context 64" and skipped["launcher"] == "scripted"


def test_queued_cells_of_an_entry_that_ooms_are_skipped_without_launch(tmp_path):
    """With one slot the runner holds the queue itself: the longer cell is never submitted."""
    suite = load_suite(write_suite(tmp_path, contexts=[32, 64, 128]))
    engine = ScriptedLauncher(suite, {("full", 64): "oom"}, slots=1)
    summary = run_suite(suite, tmp_path / "out", progress=False, launcher=engine)
    assert _statuses(summary.suite_dir) == {("full", 32): "ok", ("full", 64): "oom", ("full", 128): "skipped"}
    assert engine.submitted == [("full", 32), ("full", 64)] and not engine.cancelled


def test_a_lost_cell_is_retried_and_written_once(tmp_path):
    suite = load_suite(write_suite(tmp_path, contexts=[32, 64]))
    engine = ScriptedLauncher(suite, {("full", 32): ["lost", "ok"]})
    summary = run_suite(suite, tmp_path / "out", progress=False, launcher=engine)
    assert _statuses(summary.suite_dir) == {("full", 32): "ok", ("full", 64): "ok"}
    assert engine.submitted.count(("full", 32)) == 2
    assert len(list((summary.suite_dir / "cells").glob("*.json"))) == 2


def test_a_cell_lost_beyond_its_retries_is_recorded_and_rerun_on_resume(tmp_path):
    suite = load_suite(write_suite(tmp_path, contexts=[32, 64]))
    out = tmp_path / "out"
    first = run_suite(suite, out, progress=False, launcher=ScriptedLauncher(suite, {("full", 32): ["lost", "lost"]}))
    assert _statuses(first.suite_dir) == {("full", 32): "lost", ("full", 64): "ok"}
    again = ScriptedLauncher(suite, {})
    second = run_suite(suite, out, progress=False, launcher=again)
    assert again.submitted == [("full", 32)] and second.reused == 1
    assert _statuses(second.suite_dir) == {("full", 32): "ok", ("full", 64): "ok"}
    assert len(list((second.suite_dir / "cells").glob("*.json"))) == 2


# ------------------------------------------------------------------------- suite section and CLI


def test_launcher_section_is_typed_and_refuses_unknown_keys(tmp_path):
    spec = load_suite(write_suite(tmp_path, launcher={"kind": "slurm", "max_parallel": 8,
                                                      "slurm": {"partition": "gpu", "time": "2:00:00"}})).spec.launcher
    assert (spec.kind, spec.max_parallel, spec.slurm.partition, spec.slurm.time) == ("slurm", 8, "gpu", "2:00:00")
    assert load_suite(write_suite(tmp_path, launcher="ray")).spec.launcher.kind == "ray"
    with pytest.raises(UserError, match="unknown key 'max_paralel'.*did you mean 'max_parallel'"):
        load_suite(write_suite(tmp_path, launcher={"max_paralel": 2}))
    with pytest.raises(UserError, match="not a Slurm time"):
        load_suite(write_suite(tmp_path, launcher={"slurm": {"time": "soon"}}))
    with pytest.raises(UserError, match="gpus_per_cell must be >= 1"):
        load_suite(write_suite(tmp_path, launcher={"gpus_per_cell": 0}))


def test_flags_override_the_suite_launcher_section(tmp_path):
    path = write_suite(tmp_path, launcher={"kind": "slurm", "slurm": {"partition": "gpu", "account": "lab"}})
    spec = load_suite(path, launcher={"max_parallel": 2, "slurm": {"partition": "debug"}}).spec.launcher
    assert (spec.kind, spec.max_parallel, spec.slurm.partition, spec.slurm.account) == ("slurm", 2, "debug", "lab")


@pytest.mark.parametrize("engine, extra", [("ray", "ray"), ("submitit", "slurm")])
def test_a_missing_engine_is_one_line(tmp_path, monkeypatch, capsys, engine, extra):
    monkeypatch.setitem(sys.modules, engine, None)  # import fails as if not installed
    code = main(["run", str(write_suite(tmp_path)), "--launcher", extra, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"pip install 'segbench[{extra}]'" in err
