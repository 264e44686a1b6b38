"""The cell entry point: one cell in one fresh process, however it ended turned into a row.

The runner and every launcher (local threads, a Ray task, a Slurm job) call `run_cell` from here,
so the runner depends on the launchers and neither imports the other's internals.

A cell must never outlive whoever started it (on a GPU it would hold the memory the next run
needs). Three guards, each covering what the others cannot:
- the forkserver gets a parent-death signal (segbench/forkserver_guard.py) and exits when the
  runner's end of its `alive` pipe closes (multiprocessing's own mechanism);
- every cell gets a parent-death signal too (it dies with the forkserver, worker.py);
- every cell watches a liveness pipe whose write end only the process running `run_cell` holds:
  when that process dies, however (SIGKILL included), the kernel closes it and the cell kills its
  own process group. This also covers a forkserver that outlives the runner for any reason.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

from segbench.estimates import estimate_columns
from segbench.models import is_trained
from segbench.suite import Cell, Suite

_CONTEXT: mp.context.BaseContext | None = None
_WARM = False
_WARM_LOCK = threading.Lock()
# Read by segbench/forkserver_guard.py inside the forkserver: the pid it must die with.
PARENT_ENV = "SEGBENCH_FORKSERVER_PARENT"


def forkserver() -> mp.context.BaseContext:
    global _CONTEXT
    if _CONTEXT is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["segbench.forkserver_guard", "segbench.preload"])
        _CONTEXT = ctx
    return _CONTEXT


def _noop() -> None:
    pass


def warm_forkserver() -> None:
    """Start the forkserver (its imports take seconds) before any cell's clock starts.

    Called from the main thread where possible: Linux delivers a parent-death signal when the
    *thread* that forked the child ends, so a forkserver started from a pool thread would die with
    that thread (multiprocessing then starts a new one, paying the imports again).
    """
    global _WARM
    with _WARM_LOCK:
        if _WARM:
            return
        os.environ[PARENT_ENV] = str(os.getpid())
        try:
            proc = forkserver().Process(target=_noop, name="segbench-warmup")
            proc.start()
            proc.join()
        finally:
            os.environ.pop(PARENT_ENV, None)
        _WARM = True


def base_row(cell: Cell) -> dict:
    """The columns that say what a cell is: every row has them, whatever became of the cell."""
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


def failed_row(cell: Cell, status: str, detail: str) -> dict:
    """A row for a cell whose task ended without returning one (lost node, cancelled, engine error)."""
    row = base_row(cell)
    row.update(status=status, status_detail=detail[:500])
    return row


def run_cell(cell: Cell, suite: Suite, workdir: Path, *, visible_devices: str | None = None,
             stop: threading.Event | None = None) -> dict:
    """Run one cell in a fresh process and turn however it ended into a row.

    `visible_devices` becomes the cell's CUDA_VISIBLE_DEVICES (None: inherited). `stop` lets a
    launcher running cells from threads end one early: a KeyboardInterrupt only reaches the
    main thread, and a cell must not outlive the sweep that started it.
    """
    warm_forkserver()  # a no-op after the first call: start-up is never part of duration_s
    result_path = workdir / f"{cell.config_hash}.json"
    result_path.unlink(missing_ok=True)
    timeout = suite.spec.limits.timeout_s
    alive_r, alive_w = forkserver().Pipe(duplex=False)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    proc = forkserver().Process(
        target=_cell_entry,
        args=(visible_devices, alive_r, cell, suite.spec.limits, suite.spec.plugins,
              str(suite.base_dir) if suite.base_dir else None, str(result_path)),
        name=f"segbench-cell-{cell.config_hash}",
    )
    try:
        proc.start()
        alive_r.close()  # the cell holds its own copy; ours would keep the pipe open for ever
        ended = _join(proc, timeout, stop)
        _kill_group(proc)  # also after a clean exit: whatever the cell spawned into its group goes with it
    except BaseException:
        if proc.pid is not None:
            _kill_group(proc)
        raise
    finally:
        alive_r.close()  # idempotent; here for a start that failed
        alive_w.close()
    row = base_row(cell)
    if ended == "stopped":
        row.update(status="lost", status_detail="the sweep was interrupted while this cell ran")
    elif ended == "timeout":
        row.update(status="timeout", status_detail=f"exceeded the cell limit timeout_s={timeout:g}")
    elif result_path.is_file():
        row.update(json.loads(result_path.read_text()))
        row.update(base_row(cell))  # what the cell is comes from the suite, never from the process
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


def run_cell_here(cell: Cell, suite: Suite) -> dict:
    """A remote task's body (Ray worker or Slurm job): the same run_cell as the local launcher.

    The engine chose this task's GPUs and said so in CUDA_VISIBLE_DEVICES; the cell is handed
    them explicitly, so it does not depend on which process started the forkserver.
    """
    devices = os.environ.get("CUDA_VISIBLE_DEVICES") if cell.device == "cuda" else None
    with tempfile.TemporaryDirectory(prefix="segbench-") as tmp:
        return run_cell(cell, suite, Path(tmp), visible_devices=devices)


def _cell_entry(visible_devices: str | None, alive, *args) -> None:
    """The cell process's target: its GPUs are set before anything can initialise CUDA."""
    os.setsid()  # own process group: the runner kills the cell and all it spawned with one killpg
    _watch_liveness(alive)
    if visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    from segbench import worker  # imported here so `segbench report` never pays for torch

    worker.cell_main(*args)


def _watch_liveness(alive) -> None:
    """Kill this cell's process group once the pipe's write end is closed: whoever ran run_cell is gone."""
    fd = alive.fileno()

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        if os.getpgrp() == os.getpid():  # our own group (setsid above): take anything the cell spawned too
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="segbench-liveness", daemon=True).start()


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
    except (ProcessLookupError, PermissionError):  # the group is gone (or was never made)
        if proc.exitcode is None:
            proc.kill()
    proc.join()
