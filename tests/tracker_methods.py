"""A method registered only in tracker tests: full attention that writes down, at every prefill and
decode step, what the host allocator is doing right then, so a test can see which pass ran under
which settings, in which order, with how many Python threads.

Loaded by suites through `plugins: [tracker_methods.py]`, so the cell processes register it too.
"""

from __future__ import annotations

import ctypes
import json
import threading
from dataclasses import dataclass

from segbench.methods.full import Full, FullParams

from segbench import measure
from segbench.method import register_method

_PROBE_BYTES = 8 << 20  # above glibc's initial 128 KiB threshold and below its 32 MiB dynamic maximum


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _mmapped(libc, size: int) -> bool:
    before = libc.mallinfo2().hblks
    ptr = libc.malloc(size)
    during = libc.mallinfo2().hblks
    libc.free(ptr)
    return during > before


def mmap_threshold_is_dynamic() -> bool:
    """Read glibc's behaviour back: free an 8 MiB block, then allocate one again.

    With the dynamic threshold the free raises it past 8 MiB and the second block comes from the
    heap; with a pinned threshold (256 KiB) both are mmapped. (The first free is what glibc's
    defaults do with any large free anyway, so the probe changes nothing the cell would not.)
    """
    libc = _libc()
    _mmapped(libc, _PROBE_BYTES)
    return not _mmapped(libc, _PROBE_BYTES)


@dataclass(frozen=True)
class AllocatorProbeParams(FullParams):
    log: str = ""  # a JSON-lines file the cell appends one entry per prefill / decode step to


@register_method("allocator_probe")
class AllocatorProbe(Full):
    summary = "Test-only: full attention that logs the allocator's behaviour at every step."
    Params = AllocatorProbeParams

    def _log(self, phase: str) -> None:
        entry = {"phase": phase, "dynamic": mmap_threshold_is_dynamic(),
                 "allocator": measure.allocator_settings(), "threads": threading.active_count()}
        with open(self.params.log, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def prefill(self, model, input_ids):
        self._log("prefill")
        return super().prefill(model, input_ids)

    def decode(self, model, token_ids, gen):
        self._log("decode")
        return super().decode(model, token_ids, gen)
