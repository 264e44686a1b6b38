"""The parent of a sweep: orders cells, hands them to a launcher, records every outcome, resumes.

The parent never initialises CUDA (it asks NVML whether a GPU exists). A launcher
(segbench/launchers/) decides where each cell's process runs; wherever that is, `run_cell`
(segbench/cellproc.py) starts it from a forkserver that has already imported torch and
transformers, so a short cell is not dominated by ~6 s of imports, and every cell still gets a
clean allocator and peak-memory record. Everything the sweep decides (order, resume,
skip-after-OOM, retries, progress, rows) is here, once, for every launcher. The runner depends on
the launchers and on cellproc; neither imports the runner.

Results go to `<out>/<slug of the suite name>` and nowhere else; one run at a time holds that
directory (store.SuiteLock).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from segbench import __version__, store
from segbench.cellproc import base_row, run_cell  # noqa: F401 - run_cell re-exported for callers and tests
from segbench.errors import UserError, warn
from segbench.launchers import Launcher, make_launcher
from segbench.measure import nvml_gpu_count
from segbench.suite import Cell, LauncherSpec, Suite
from segbench.typed import to_dict


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
        store.check_inside(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe"):
            pass
    except OSError as e:
        why = e.strerror or str(e)
        raise UserError(f"cannot write results to {str(directory)!r} ({why}); pass --out DIR") from None


def check_suite_json(suite_dir: Path, name: str) -> None:
    """Refuse a directory that holds another suite's results (two names can share a slug)."""
    path = suite_dir / "suite.json"
    if not path.exists() and not path.is_symlink():
        return
    try:
        info = store.read_own_json(path)
    except ValueError as e:
        raise UserError(f"{path} was not written by segbench ({e}); move it away or pass another --out") from None
    if not isinstance(info, dict) or not isinstance(info.get("name"), str):
        raise UserError(f"{path} was not written by segbench; move it away or pass another --out")
    if info["name"] != name:
        raise UserError(f"{suite_dir} holds the results of suite {info['name']!r}, not {name!r}; "
                        f"rename this suite or pass another --out")


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


def run_suite(suite: Suite, out_root: Path, *, fresh: bool = False, retry_failed: bool = False,
              progress: bool = True, launcher: str | Launcher | None = None,
              launch: LauncherSpec | None = None) -> RunSummary:
    """Run every cell of `suite` not already finished under `out_root/<slug of the suite name>`.

    `launch` replaces the suite's own `launcher:` section; `launcher` (a name, or a Launcher
    instance) replaces its kind. Whatever runs the cells, rows are written here, by this process,
    and nothing is written or removed outside that directory.
    """
    spec = launch or suite.spec.launcher
    name = launcher.name if isinstance(launcher, Launcher) else (launcher or spec.kind)
    if name == "local":  # a Ray head or Slurm login node needs no GPU of its own; the engine checks its nodes
        check_device(suite)
    suite_dir = Path(out_root) / store.suite_slug(suite.name)
    check_writable(suite_dir)
    check_suite_json(suite_dir, suite.name)
    lock = store.SuiteLock(suite_dir)
    try:
        lock.acquire()
    except BlockingIOError as e:
        raise UserError(f"{suite_dir} is in use by another `segbench run` ({e}); wait for it to finish "
                        f"or pass another --out") from None
    except OSError as e:
        raise UserError(f"cannot lock {str(suite_dir)!r} ({e.strerror or e}); pass --out DIR") from None
    try:
        return _run_locked(suite, suite_dir, spec, name, launcher, fresh=fresh, retry_failed=retry_failed,
                           progress=progress)
    finally:
        lock.release()


def _run_locked(suite: Suite, suite_dir: Path, spec: LauncherSpec, name: str, launcher: str | Launcher | None, *,
                fresh: bool, retry_failed: bool, progress: bool) -> RunSummary:
    engine = launcher if isinstance(launcher, Launcher) else make_launcher(name, suite, spec, suite_dir)
    cells_store = store.CellStore(suite_dir)
    cells_store.remove_stale_temps()
    if fresh:
        left = cells_store.clear()
        if left:
            warn(f"--fresh left {len(left)} file(s) in {suite_dir} that segbench did not write, e.g. {left[0]}")
    store.write_json_atomic(suite_dir / "suite.json", {"name": suite.name, "path": str(suite.path or ""),
                                                       "spec": to_dict(suite.spec), "params": list(suite.params)})
    done = cells_store.finished()
    if cells_store.skipped and not fresh:
        warn(store.skipped_note(cells_store.skipped, "their cells run again"))
    if retry_failed:
        done = {h: r for h, r in done.items() if r.get("status") in ("ok", "skipped", "unsupported")}
    cells = suite.cells()
    mine = {c.config_hash for c in cells}
    done = {h: r for h, r in done.items() if h in mine}  # another configuration's rows stay, unused
    summary = RunSummary(suite_dir=suite_dir, launcher=engine.name)
    t_start = time.monotonic()
    with _Progress(len(cells), enabled=progress) as bar, engine:
        sweep = _Sweep(suite, spec, cells_store, done, summary, bar)
        _drive(sweep, engine, launch_order(cells, parallel=engine.slots() > 1))
    for row in cells_store.rows():
        if row["config_hash"] in mine:  # a foreign file is never counted as one of this sweep's results
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
