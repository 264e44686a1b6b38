"""Imported first by the runner's forkserver: it dies with the process that started it.

multiprocessing's forkserver exits when the runner's end of its `alive` pipe closes, but only once
its preload imports are done, and it is re-parented to init meanwhile. A parent-death signal
covers that window and any process that somehow keeps the pipe open. The runner names its pid in
the environment (segbench/cellproc.py); imported anywhere else, this module does nothing.
"""

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def _guard() -> None:
    parent = os.environ.pop("SEGBENCH_FORKSERVER_PARENT", None)
    if not parent:
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not glibc Linux: the alive pipe and each cell's liveness pipe remain
        pass
    if os.getppid() != int(parent):  # the runner died before the signal was armed
        os._exit(0)


_guard()
