"""The parent of a sweep: orders cells, hands them to a launcher, records every outcome, resumes.

The parent never initialises CUDA (it asks NVML whether a GPU exists). A launcher
(segbench/launchers/) decides where each cell's process runs; wherever that is, `run_cell` starts
it from a forkserver that has already imported torch and transformers, so a short cell is not
dominated by ~6 s of imports, and every cell still gets a clean allocator and peak-memory record.
Everything the sweep decides (order, resume, skip-after-OOM, retries, progress, rows) is here,
once, for every launcher.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from segbench import __version__, store
from segbench.errors import UserError
from segbench.estimates import estimate_columns
from segbench.launchers import Launcher, make_launcher
from segbench.measure import nvml_gpu_count
from segbench.models import is_trained
from segbench.suite import Cell, LauncherSpec, Suite
from segbench.typed import to_dict

_CONTEXT: mp.context.BaseContext | None = None


def forkserver() -> mp.context.BaseContext:
    global _CONTEXT
    if _CONTEXT is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["segbench.preload"])
        _CONTEXT = ctx
    return _CONTEXT


@dataclass
class RunSummary:
    suite_dir: Path
    launcher: str = "local"
    ran: int = 0
    reused: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


def check_device(suite: Suite) -> None:
    if suite.spec.device != "cuda":
        return
    import torch  # the CPU-only check below reads build metadata and touches no device

    if torch.version.cuda is None or nvml_gpu_count() == 0:
        where = suite.path or suite.name
        raise UserError(
            f"{where} runs on cuda but this machine has no CUDA GPU; run a CPU miniature instead: "
            f"segbench run {where} --device cpu --model tiny-llama --contexts 1024,2048"
        )


def check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe"):
            pass
    except OSError as e:
        raise UserError(f"cannot write results to {str(directory)!r} ({e.strerror}); pass --out DIR") from None


def git_info() -> tuple[str, bool | None]:
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "", None
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return "", None


def base_row(cell: Cell) -> dict:
    return {
        "suite": cell.suite,
        "method": cell.method,
        "label": cell.label,
        "params": json.dumps(cell.params, sort_keys=True),
        "model": cell.model,
        "model_trained": is_trained(cell.model),
        "dtype": cell.dtype,
        "device": cell.device,
        "context_len": cell.context_len,
        "decode_tokens": cell.workload.decode_tokens,
        "task": cell.task,
        "repeat_group": cell.repeat_group,
        "config_hash": cell.config_hash,
        **estimate_columns(cell),  # failed rows too: the estimate matters most where a cell failed
    }


def run_cell(cell: Cell, suite: Suite, workdir: Path, *, visible_devices: str | None = None,
             stop: threading.Event | None = None) -> dict:
    """Run one cell in a fresh process and turn however it ended into a row.

    `visible_devices` becomes the cell's CUDA_VISIBLE_DEVICES (None: inherited). `stop` lets a
    launcher running cells from threads end one early: a KeyboardInterrupt only reaches the
    main thread, and a cell must not outlive the sweep that started it.
    """
    result_path = workdir / f"{cell.config_hash}.json"
    result_path.unlink(missing_ok=True)
    timeout = suite.spec.limits.timeout_s
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    proc = forkserver().Process(
        target=_cell_entry,
        args=(visible_devices, cell, suite.spec.limits, suite.spec.plugins,
              str(suite.base_dir) if suite.base_dir else None, str(result_path)),
        name=f"segbench-cell-{cell.config_hash}",
    )
    proc.start()
    try:
        ended = _join(proc, timeout, stop)
        if ended != "exited":
            _kill_group(proc)
    except BaseException:
        _kill_group(proc)
        raise
    row = base_row(cell)
    if ended == "stopped":
        row.update(status="lost", status_detail="the sweep was interrupted while this cell ran")
    elif ended == "timeout":
        row.update(status="timeout", status_detail=f"exceeded the cell limit timeout_s={timeout:g}")
    elif result_path.is_file():
        row.update(json.loads(result_path.read_text()))
        result_path.unlink()
    elif proc.exitcode is not None and proc.exitcode < 0:
        sig = signal.Signals(-proc.exitcode).name
        hint = " (the kernel's OOM killer sends SIGKILL when the host runs out of memory)" if sig == "SIGKILL" else ""
        row.update(status="killed", status_detail=f"worker killed by {sig}{hint}")
    else:
        row.update(status="error", status_detail=f"worker exited with code {proc.exitcode} before writing a result")
    row.setdefault("hostname", socket.gethostname())  # a cell that wrote no row still says where it ran
    row["started_at"] = started
    row["duration_s"] = time.monotonic() - t0
    return row


def _cell_entry(visible_devices: str | None, *args) -> None:
    """The cell process's target: its GPUs are set before anything can initialise CUDA."""
    if visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    from segbench import worker  # imported here so `segbench report` never pays for torch

    worker.cell_main(*args)


def _join(proc, timeout: float, stop: threading.Event | None) -> str:
    """How the wait ended: 'exited', 'timeout' or 'stopped'."""
    if stop is None:
        proc.join(timeout)  # one blocking join: a KeyboardInterrupt lands here and kills the cell
    else:
        deadline = time.monotonic() + timeout
        while proc.is_alive() and not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            proc.join(min(left, 0.2))
        if stop.is_set() and proc.is_alive():
            return "stopped"
    return "timeout" if proc.is_alive() else "exited"


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.join()


def run_suite(suite: Suite, out_root: Path, *, fresh: bool = False, retry_failed: bool = False,
              progress: bool = True, launcher: str | Launcher | None = None,
              launch: LauncherSpec | None = None) -> RunSummary:
    """Run every cell of `suite` not already finished under `out_root/<suite name>`.

    `launch` replaces the suite's own `launcher:` section; `launcher` (a name, or a Launcher
    instance) replaces its kind. Whatever runs the cells, rows are written here, by this process.
    """
    spec = launch or suite.spec.launcher
    name = launcher.name if isinstance(launcher, Launcher) else (launcher or spec.kind)
    if name == "local":  # a Ray head or Slurm login node needs no GPU of its own; the engine checks its nodes
        check_device(suite)
    suite_dir = Path(out_root) / suite.name
    check_writable(suite_dir)
    engine = launcher if isinstance(launcher, Launcher) else make_launcher(name, suite, spec, suite_dir)
    cells_store = store.CellStore(suite_dir)
    cells_store.remove_stale_temps()
    if fresh:
        cells_store.clear()
    store.write_json_atomic(suite_dir / "suite.json", {"name": suite.name, "path": str(suite.path or ""),
                                                       "spec": to_dict(suite.spec), "params": list(suite.params)})
    done = cells_store.finished()
    if retry_failed:
        done = {h: r for h, r in done.items() if r.get("status") in ("ok", "skipped", "unsupported")}
    cells = suite.cells()
    summary = RunSummary(suite_dir=suite_dir, launcher=engine.name)
    t_start = time.monotonic()
    with _Progress(len(cells), enabled=progress) as bar, engine:
        sweep = _Sweep(suite, spec, cells_store, done, summary, bar)
        _drive(sweep, engine, launch_order(cells, parallel=engine.slots() > 1))
    for row in cells_store.rows():
        summary.statuses[row["status"]] = summary.statuses.get(row["status"], 0) + 1
    summary.wall_s = time.monotonic() - t_start
    return summary


def launch_order(cells: list[Cell], parallel: bool) -> list[Cell]:
    """The order cells are handed to the launcher.

    One at a time: suite order (contexts ascending within each method entry), so an OOM skips every
    longer context of that entry. Several at once: longest contexts first, suite order within a
    context; the longest cells then start first instead of stretching the end of the sweep
    (longest-processing-time-first), at the price of fewer OOM skips.
    """
    return sorted(cells, key=lambda c: -c.context_len) if parallel else list(cells)


def _drive(sweep: _Sweep, engine: Launcher, cells: list[Cell]) -> None:
    """Keep the launcher's slots full, record each cell as it ends, until every cell is settled."""
    queue = deque(cells)
    in_flight: dict[str, Cell] = {}
    while queue or in_flight:
        batch: list[Cell] = []
        room = engine.slots() - len(in_flight)
        while queue and len(batch) < room:
            cell = queue.popleft()
            if not sweep.settle(cell):  # reused or skipped cells need no launch
                batch.append(cell)
        if batch:
            engine.submit(batch)
            for cell in batch:
                in_flight[cell.config_hash] = cell
                sweep.bar.start(cell)
        if not in_flight:
            continue
        for cell, row in engine.wait():
            if in_flight.pop(cell.config_hash, None) is None:
                continue  # already settled (withdrawn after an OOM): one row per cell, ever
            if sweep.retry(cell, row):
                queue.appendleft(cell)
                continue
            sweep.record(cell, row)
            if row["status"] == "oom":  # withdraw queued longer cells of that entry the engine still holds
                for other in [c for c in in_flight.values() if sweep.skips(c)]:
                    if engine.cancel(other):
                        del in_flight[other.config_hash]
                        sweep.record(other, sweep.skipped_row(other))


class _Sweep:
    """The bookkeeping every launcher shares: resume, skip-after-OOM, retries of lost cells, rows."""

    def __init__(self, suite: Suite, spec: LauncherSpec, cells_store: store.CellStore, done: dict[str, dict],
                 summary: RunSummary, bar: _Progress) -> None:
        self.skip_after_oom = suite.spec.skip_longer_after_oom
        self.retries = spec.retries
        self.store = cells_store
        self.done = done
        self.summary = summary
        self.bar = bar
        sha, dirty = git_info()
        self.provenance = {"git_sha": sha, "git_dirty": dirty, "segbench_version": __version__,
                           "launcher": summary.launcher}
        self.attempts: dict[str, int] = {}
        self.oom_at: dict[str, int] = {}  # label -> shortest context that ran out of memory
        for row in done.values():
            if row.get("status") == "oom":
                self._note_oom(row["label"], row["context_len"])

    def settle(self, cell: Cell) -> bool:
        """Settle a cell without running it if a finished row stands or an OOM rules it out."""
        prior = self.done.get(cell.config_hash)
        # A skip stands only while its cause does: with the OOM gone (--retry-failed) the cell runs.
        if prior is not None and not (prior.get("status") == "skipped" and cell.label not in self.oom_at):
            self.summary.reused += 1
            self.bar.advance(cell, prior["status"], reused=True)
            return True
        if self.skips(cell):
            self.record(cell, self.skipped_row(cell))
            return True
        return False

    def skips(self, cell: Cell) -> bool:
        return self.skip_after_oom and cell.label in self.oom_at and cell.context_len > self.oom_at[cell.label]

    def skipped_row(self, cell: Cell) -> dict:
        row = base_row(cell)
        row.update(status="skipped", status_detail=f"{cell.label} ran out of memory at context {self.oom_at[cell.label]}")
        return row

    def retry(self, cell: Cell, row: dict) -> bool:
        """A lost cell (its node or task died, not the cell) goes back to the queue, `retries` times."""
        if row["status"] != "lost" or self.attempts.get(cell.config_hash, 0) >= self.retries:
            return False
        self.attempts[cell.config_hash] = self.attempts.get(cell.config_hash, 0) + 1
        self.bar.advance(cell, "lost", detail=f"{row.get('status_detail')}; submitting it again", counts=False)
        return True

    def record(self, cell: Cell, row: dict) -> None:
        row.update(self.provenance)
        self.store.write(row)
        self.summary.ran += 1
        if row["status"] == "oom":
            self._note_oom(cell.label, cell.context_len)
        self.bar.advance(cell, row["status"], detail=row.get("status_detail"))

    def _note_oom(self, label: str, context_len: int) -> None:
        self.oom_at[label] = min(self.oom_at.get(label, context_len), context_len)


class _Progress:
    """A rich progress bar: cells done, the cells in flight, ETA; one log line per finished cell."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.running: dict[str, Cell] = {}  # in submission order: the oldest is shown by name

    def __enter__(self):
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("cells", total=self.total)
        return self

    def start(self, cell: Cell) -> None:
        self.running[cell.config_hash] = cell
        self._describe()

    def _describe(self) -> None:
        if not self.enabled:
            return
        if not self.running:
            text = "cells"
        else:
            first = next(iter(self.running.values()))
            more = f" (+{len(self.running) - 1} more)" if len(self.running) > 1 else ""
            text = f"running {first.describe()}{more}"
        self.progress.update(self.task, description=text)

    def advance(self, cell: Cell, status: str, reused: bool = False, detail: str | None = None,
                counts: bool = True) -> None:
        self.running.pop(cell.config_hash, None)
        if not self.enabled:
            return
        colour = {"ok": "green", "skipped": "yellow", "unsupported": "yellow"}.get(status, "red")
        note = " (already done)" if reused else (f" - {detail}" if detail and status != "ok" else "")
        self.progress.console.log(f"{cell.describe():<40} [{colour}]{status}[/{colour}]{note}")
        if counts:
            self.progress.advance(self.task)
        self._describe()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.update(self.task, description="cells")
            self.progress.__exit__(*exc)
