"""This machine: one cell at a time, or one per GPU group on a machine with several GPUs.

Cells run from a thread pool whose threads only wait on their cell's process; each thread takes a
group of GPUs from a shared pool for the length of its cell and hands it to the cell as
CUDA_VISIBLE_DEVICES, so no two cells in flight share a GPU. The GPU count comes from NVML:
the parent never initialises CUDA.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from segbench.cellproc import run_cell, warm_forkserver
from segbench.errors import UserError
from segbench.launchers import Finished, Launcher
from segbench.measure import nvml_gpu_count
from segbench.suite import Cell, LauncherSpec, Suite


def gpu_groups(device: str, gpu_count: int, gpus_per_cell: int, max_parallel: int | None,
               visible: str | None) -> list[str | None]:
    """One entry per slot: the CUDA_VISIBLE_DEVICES a cell in that slot gets (None: left as it is).

    `visible` is the parent's own CUDA_VISIBLE_DEVICES: a user who narrowed it keeps the sweep to
    those GPUs. With 0 or 1 GPU (or a CPU suite) the sweep stays sequential unless --max-parallel
    asks for more CPU cells at once, which then contend for the same cores.
    """
    if device != "cuda":
        return [None] * (max_parallel or 1)
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(gpu_count)]
    if gpus_per_cell > max(len(ids), 1):
        raise UserError(f"--gpus-per-cell {gpus_per_cell}: this machine has {len(ids)} visible GPU(s)")
    if len(ids) <= 1:
        return [None]
    groups: list[str | None] = [",".join(ids[i:i + gpus_per_cell])
                                for i in range(0, len(ids) - gpus_per_cell + 1, gpus_per_cell)]
    return groups[:max_parallel] if max_parallel else groups


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, suite: Suite, spec: LauncherSpec, *, gpu_count: int | None = None) -> None:
        super().__init__(suite, spec)
        count = nvml_gpu_count() if gpu_count is None else gpu_count
        groups = gpu_groups(suite.spec.device, count, spec.gpus_per_cell, spec.max_parallel,
                            os.environ.get("CUDA_VISIBLE_DEVICES"))
        self._slots = len(groups)
        self._free: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        for group in groups:
            self._free.put(group)
        self._pool = cf.ThreadPoolExecutor(max_workers=self._slots, thread_name_prefix="segbench-cell")
        self._futures: dict[cf.Future, Cell] = {}
        self._stop = threading.Event()
        self._tmp = tempfile.TemporaryDirectory(prefix="segbench-")

    def slots(self) -> int:
        return self._slots

    def submit(self, cells: Sequence[Cell]) -> None:
        # From the calling (main) thread: a forkserver started by a pool thread would die with it.
        warm_forkserver()
        for cell in cells:
            self._futures[self._pool.submit(self._run, cell)] = cell

    def _run(self, cell: Cell) -> dict:
        # The runner never has more cells in flight than slots, so a group is always free here.
        devices = self._free.get()
        try:
            return run_cell(cell, self.suite, Path(self._tmp.name), visible_devices=devices, stop=self._stop)
        finally:
            self._free.put(devices)

    def wait(self) -> list[Finished]:
        done, _ = cf.wait(self._futures, return_when=cf.FIRST_COMPLETED)
        return [(self._futures.pop(f), f.result()) for f in done]

    def close(self) -> None:
        self._stop.set()  # cells still running are killed by their threads (run_cell polls this)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._tmp.cleanup()
