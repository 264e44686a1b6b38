"""Launchers: where a cell's process runs. Each is a small adapter over an existing engine.

The runner (segbench/runner.py) owns everything a sweep decides: order, resume, skip-after-OOM,
retries of lost cells, progress and writing rows. A launcher only starts cells and reports, once
per submitted cell, the row `run_cell` produced for it, or a row saying why none came back.

- local: this machine; one cell at a time, or one per GPU group on a multi-GPU machine.
- ray: one Ray task per cell, sized by the cell's GPU and host-memory needs.
- slurm: one submitit array task per cell.

Every launcher runs the same `segbench.cellproc.run_cell`, so a cell always gets its own fresh
process and its timeouts and fault classification are the same wherever it runs.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from segbench.cellproc import failed_row, run_cell_here  # noqa: F401 - the launchers' shared cell entry
from segbench.errors import UserError
from segbench.suite import Cell, LauncherSpec, Suite

NAMES = ("local", "ray", "slurm")
GIB = 1024**3
# Host memory a cell needs besides its model and activations: Python, torch and transformers
# (~1 GiB RSS on CPU); on GPU also the CUDA runtime and room to stage a checkpoint shard.
RUNTIME_HOST_BYTES = {"cpu": 2 * GIB, "cuda": 8 * GIB}

Finished = tuple[Cell, dict]


class Launcher(abc.ABC):
    """Starts cells and reports how each ended. Used as a context manager: leaving it stops the rest."""

    name: str = ""

    def __init__(self, suite: Suite, spec: LauncherSpec) -> None:
        self.suite = suite
        self.spec = spec

    @abc.abstractmethod
    def slots(self) -> int:
        """How many cells the runner keeps in flight. Beyond what the engine can run at once they
        only wait in its queue, so a launcher that can withdraw queued cells may ask for more."""

    @abc.abstractmethod
    def submit(self, cells: Sequence[Cell]) -> None:
        """Start these cells (in this order of preference)."""

    @abc.abstractmethod
    def wait(self) -> list[Finished]:
        """Block until at least one submitted cell has ended; each ended cell is reported exactly once."""

    def cancel(self, cell: Cell) -> bool:
        """Withdraw a submitted cell that has not started. True only if it is sure never to run
        (it is then never reported); False leaves it to run and report as usual."""
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Stop cells still in flight (an interrupted sweep) and release the engine."""

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_launcher(name: str, suite: Suite, spec: LauncherSpec, suite_dir: Path) -> Launcher:
    if name == "local":
        from segbench.launchers.local import LocalLauncher

        return LocalLauncher(suite, spec)
    if name == "ray":
        from segbench.launchers.ray import RayLauncher

        return RayLauncher(suite, spec)
    if name == "slurm":
        from segbench.launchers.slurm import SlurmLauncher

        return SlurmLauncher(suite, spec, folder=suite_dir / "slurm")
    raise UserError(f"unknown launcher {name!r}; choose one of {', '.join(NAMES)}")


def require(module: str, extra: str) -> ModuleType:
    """Import an optional engine, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--launcher {extra} needs the {module} package: pip install 'segbench[{extra}]'") from None


def host_memory_bytes(cell: Cell, spec: LauncherSpec) -> int:
    """Host memory to reserve for a cell: the user's figure, else runtime + the analytic peak on CPU."""
    if spec.host_mem_gb is not None:
        return int(spec.host_mem_gb * GIB)
    need = RUNTIME_HOST_BYTES[cell.device]
    if cell.device == "cpu":  # on GPU the weights and activations live in device memory
        from segbench.method import make_method
        from segbench.models import DTYPE_BYTES, shape_of

        try:
            est = make_method(cell.method, cell.params).estimate(
                shape_of(cell.model, cell.model_overrides), cell.context_len, DTYPE_BYTES[cell.dtype], cell.device
            )
            need += est.peak_prefill_bytes
        except NotImplementedError:
            pass  # a method without an analytic model: the runtime figure alone
    return need


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""
