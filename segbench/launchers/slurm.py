"""Slurm through submitit: one array task per cell, the whole sweep submitted at once.

Slurm is the queue: the runner hands over every cell to run in one `map_array` (an array job
whose `%max_parallel` throttle Slurm enforces; at most 1000 cells per array) and withdraws
still-pending tasks whose method entry has since run out of memory at a shorter context. Each
task runs `run_cell_here`, the same `run_cell` as on this machine, and returns its row through
submitit's pickles in `<out>/<suite>/slurm/`, which must therefore be on a filesystem the nodes
share; the driver writes every row into the one results directory.

`cluster: local` runs the same path with submitit's LocalExecutor (a process per task, no queue)
to rehearse a sweep without Slurm; it then keeps `max_parallel` (default 1) tasks in flight.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from segbench.errors import UserError
from segbench.launchers import (
    GIB,
    Finished,
    Launcher,
    failed_row,
    host_memory_bytes,
    last_line,
    require,
    run_cell_here,
)
from segbench.store import suite_slug
from segbench.suite import Cell, LauncherSpec, Suite, slurm_minutes

# Slurm's default MaxArraySize is 1001: a larger sweep is handed over this many cells at a time,
# more as cells finish (each later array then gets its own max_parallel throttle).
MAX_ARRAY = 1000
# Minutes added to the cell's own timeout for the job's limit: queue-side start, Python and the
# forkserver's imports happen inside the job but outside the cell's clock.
JOB_OVERHEAD_MIN = 10


class SlurmLauncher(Launcher):
    name = "slurm"

    def __init__(self, suite: Suite, spec: LauncherSpec, *, folder: Path) -> None:
        super().__init__(suite, spec)
        self.submitit = require("submitit", "slurm")
        self.folder = Path(folder)
        no_slurm = ("--launcher slurm: no Slurm on this machine ({}); run from a Slurm login node, or set "
                    "launcher.slurm.cluster: local to rehearse the sweep here")
        if spec.slurm.cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError(no_slurm.format("sbatch is not on PATH"))
        try:
            # "%j" gives each job (array task) its own folder of pickles and logs.
            self.executor = self.submitit.AutoExecutor(folder=self.folder / "%j", cluster=spec.slurm.cluster)
        except RuntimeError as e:  # submitit's own detection (srun) failed
            raise UserError(no_slurm.format(last_line(str(e)))) from None
        self._jobs: dict[str, tuple[Cell, object]] = {}
        self._poll_s = 1.0 if spec.slurm.cluster == "local" else 10.0

    def time_min(self) -> int:
        own = self.spec.slurm.time
        return slurm_minutes(own) if own is not None else math.ceil(self.suite.spec.limits.timeout_s / 60) + JOB_OVERHEAD_MIN

    def slots(self) -> int:
        if self.spec.slurm.cluster == "local":
            return self.spec.max_parallel or 1  # no queue there: every submitted task starts at once
        return MAX_ARRAY  # all at once, up to an array's limit; Slurm's array throttle keeps max_parallel running

    def submit(self, cells: Sequence[Cell]) -> None:
        s = self.spec.slurm
        cuda = self.suite.spec.device == "cuda"
        self.executor.update_parameters(
            name=f"segbench-{suite_slug(self.suite.name)}",  # it lands in an sbatch script: no newline or quote
            timeout_min=self.time_min(),
            nodes=1,
            tasks_per_node=1,
            cpus_per_task=self.spec.cpus_per_cell,
            gpus_per_node=self.spec.gpus_per_cell if cuda else 0,
            # One array shares one request, so it asks for what its largest cell needs.
            mem_gb=math.ceil(max(host_memory_bytes(c, self.spec) for c in cells) / GIB),
            slurm_partition=s.partition,
            slurm_account=s.account,
            slurm_array_parallelism=self.spec.max_parallel or len(cells),
        )
        jobs = self.executor.map_array(run_cell_here, list(cells), [self.suite] * len(cells))
        for cell, job in zip(cells, jobs):
            self._jobs[cell.config_hash] = (cell, job)

    def wait(self) -> list[Finished]:
        while True:
            done = [h for h, (_, job) in self._jobs.items() if job.done()]
            if done:
                return [self._finish(*self._jobs.pop(h)) for h in done]
            time.sleep(self._poll_s)

    def _finish(self, cell: Cell, job) -> Finished:
        utils = self.submitit.core.utils
        try:
            return cell, job.result()
        except utils.UncompletedJobError:  # the job ended without a result: Slurm's state says why
            state = str(job.state)
            if state.startswith(("TIMEOUT", "DEADLINE")):
                detail = f"Slurm ended job {job.job_id} at its time limit ({self.time_min()} min); raise --slurm-time"
                return cell, failed_row(cell, "timeout", detail)
            if state.startswith("OUT_OF_MEMORY"):
                return cell, failed_row(cell, "killed", f"Slurm killed job {job.job_id} for exceeding its memory request")
            return cell, failed_row(cell, "lost", f"Slurm job {job.job_id} ended without a result (state {state})")
        except utils.FailedJobError as e:  # the task body raised: run_cell itself failed on that node
            return cell, failed_row(cell, "error", f"Slurm job {job.job_id} failed: {_trace_last_line(str(e))}")

    def cancel(self, cell: Cell) -> bool:
        _, job = self._jobs[cell.config_hash]
        if str(job.state) != "PENDING":  # started (or about to): its measurement is a result
            return False
        job.cancel(check=False)
        del self._jobs[cell.config_hash]
        return True

    def close(self) -> None:
        # An interrupted sweep: nobody would write these rows, so free the nodes.
        for _, job in self._jobs.values():
            job.cancel(check=False)
        self._jobs.clear()


def _trace_last_line(message: str) -> str:
    """The exception line of submitit's FailedJobError, whose trace sits between two dashed rules."""
    parts = message.split("-" * 22)
    return last_line(parts[1] if len(parts) > 2 else message)
