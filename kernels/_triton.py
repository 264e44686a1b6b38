"""Guarded Triton import shared by the kernel modules.

The kernel modules define their ``@triton.jit`` functions at import time. Without triton installed
we still want those modules importable (their plain-torch references are what tests and the torch
path compare against), so a tiny stand-in provides ``triton.jit`` (returns the function untouched)
and ``tl.constexpr`` (for the annotations); the launchers refuse to run through ``require``.

Triton decides between the real compiler and the CPU interpreter when a kernel is *decorated*,
i.e. when the kernel module is imported, from ``TRITON_INTERPRET``. ``INTERPRETED`` records that
choice so ``available()`` tells the truth even if the variable changes later.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on installs without triton
    HAS_TRITON = False

    class _NoTriton:
        """Stands in for both ``triton`` and ``triton.language`` when triton is missing."""

        constexpr = object

        @staticmethod
        def jit(fn=None, **_kwargs):
            return fn if fn is not None else (lambda f: f)

    triton = tl = _NoTriton()  # type: ignore[assignment]

__all__ = ["HAS_TRITON", "INTERPRETED", "SHARED_LIMIT", "can_run", "check_offsets", "interpreting", "launch_first_fitting",
           "require", "shared_limit", "sm_count", "target", "tile_shared_bytes", "tl", "triton"]

# Largest dynamic shared memory one block may opt into, by compute capability x10 (CUDA's tables):
# the fallback when torch does not report ``shared_memory_per_block_optin``.
SHARED_LIMIT = {90: 232448, 89: 101376, 87: 166912, 86: 101376, 80: 166912, 75: 65536}


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` is set to a true value right now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


# Fixed at first import: the kernels in this process were decorated in this mode.
INTERPRETED = HAS_TRITON and interpreting()


def can_run(device: torch.device | str) -> bool:
    """True when the Triton kernels of this process can run on tensors living on ``device``."""
    if not HAS_TRITON:
        return False
    dev = torch.device(device)
    if INTERPRETED:
        # The interpreter runs every kernel with numpy on the host; CUDA tensors are copied over.
        return dev.type in ("cpu", "cuda")
    return dev.type == "cuda" and torch.cuda.is_available()


def require(*tensors: torch.Tensor) -> None:
    """Raise a clear error instead of a deep Triton one when the kernels cannot run here."""
    if not HAS_TRITON:
        raise RuntimeError("segbench.kernels needs triton (pip install 'segbench[kernels]')")
    for t in tensors:
        if not can_run(t.device):
            raise RuntimeError(
                f"Triton kernels cannot run on {t.device} tensors in this process: use CUDA tensors, "
                "or set TRITON_INTERPRET=1 before importing segbench.kernels modules for CPU tensors"
            )


def check_offsets(*tensors: torch.Tensor) -> None:
    """The kernels index inside one (batch, head) slice with int32 offsets (64-bit ones would cost
    registers in every tile); refuse slices too long for that instead of reading wrong memory."""
    for t in tensors:
        span = sum((size - 1) * stride for size, stride in zip(t.shape[2:], t.stride()[2:]))
        if span >= 2**31:
            raise ValueError(f"a [B, H, L, D] slice of {tuple(t.shape)} with strides {t.stride()} spans more than "
                             "2^31 elements: make it contiguous or split the sequence")


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; a small stand-in on the CPU interpreter."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def shared_limit(device: torch.device) -> int:
    """Bytes of shared memory one program may use on ``device`` (no limit on the CPU interpreter)."""
    if device.type != "cuda":
        return 1 << 40
    props = torch.cuda.get_device_properties(device)
    optin = getattr(props, "shared_memory_per_block_optin", 0)
    return int(optin) if optin else SHARED_LIMIT.get(props.major * 10 + props.minor, 101376)


def tile_shared_bytes(block_m: int, block_n: int, head_dim: int, num_stages: int, elem_bytes: int) -> int:
    """Shared memory an attention tile needs: Q [BLOCK_M, D] plus ``num_stages`` buffered K and V
    tiles [BLOCK_N, D] each. It matches what Triton reports for these kernels to within a few KB
    (compile_check prints the real figure), which is the margin between the configs pruned here."""
    return elem_bytes * head_dim * (block_m + 2 * max(num_stages, 1) * block_n)


def launch_first_fitting(launch, configs: list[dict], shared_of, device: torch.device, what: str):
    """Call ``launch(config)`` (which launches the kernel with that config and returns whatever it
    allocated) with the first of ``configs`` (best first) whose estimated shared memory
    ``shared_of(config)`` fits the device; if Triton still reports OutOfResources (the estimate is
    not the compiler), try the next. Returns launch's result. OutOfResources never escapes: a clear
    RuntimeError instead.
    """
    limit = shared_limit(device)
    fitting = [c for c in configs if shared_of(c) <= limit]
    if not fitting:
        raise RuntimeError(f"{what}: no tile configuration fits this GPU's {limit} bytes of shared memory "
                           f"(the smallest needs {min(shared_of(c) for c in configs)}); use a smaller head_dim")
    errors = []
    for config in fitting:
        try:
            return launch(config)
        except Exception as exc:  # only OutOfResources falls through to the next config
            if type(exc).__name__ != "OutOfResources":
                raise
            errors.append(f"{config}: {exc}")
    raise RuntimeError(f"{what}: every tile configuration ran out of GPU resources: " + "; ".join(errors))


def target(device: torch.device) -> str:
    """The device type whose tile configs a launch uses ("cuda" or the interpreter's "cpu").
    compile_check replaces it in the kernel modules to record GPU launches from CPU tensors."""
    return device.type
