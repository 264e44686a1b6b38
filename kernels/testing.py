"""Helpers for the kernel tests: where to run them, and the accuracy rule they are held to.

The rule: a kernel may be off from a float64 reference by at most twice what the same computation in
plain PyTorch is off by at the kernel's precision, plus a floor relative to the reference's magnitude
(1e-6 of it by default), so tolerances follow the inputs instead of being hand-tuned constants.
"""

from __future__ import annotations

import importlib
import sys

import torch

_MODULES = ("_triton", "_softmax", "decode_attention", "segmented_attention", "block_sparse")


def kernel_test_device() -> torch.device:
    """The device the kernel tests use in this process, or skip the calling test module.

    CPU under ``TRITON_INTERPRET=1`` (the test files set it before importing triton); CUDA when the
    kernels were compiled for real. If a module collected earlier imported the kernels in compiler
    mode on a machine without CUDA, they cannot run at all, so they are re-imported in interpreter mode.
    """
    import pytest

    pytest.importorskip("triton")
    from . import _triton

    if not _triton.INTERPRETED and _triton.interpreting() and not torch.cuda.is_available():
        for name in _MODULES:  # dependency order: the kernels re-decorate against a reloaded _triton
            module = sys.modules.get(f"{__package__}.{name}")
            if module is not None:
                importlib.reload(module)
        _triton = importlib.import_module(f"{__package__}._triton")
    if _triton.INTERPRETED:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1 (set before triton is imported)",
                allow_module_level=True)
    raise AssertionError("unreachable")


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, compared in float64."""
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_within_rule(kernel: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor, what: str,
                       floor: float = 1e-6) -> None:
    """Kernel error vs the float64 reference <= 2x the plain-torch error at the same precision, plus
    `floor` x the reference's largest magnitude (relative, so the rule holds at any scale; an
    absolute floor would be loose for small outputs and vanish for large ones, e.g. the LSE)."""
    assert kernel.shape == ref64.shape, f"{what}: shape {tuple(kernel.shape)} != {tuple(ref64.shape)}"
    finite = ref64[torch.isfinite(ref64)]
    scale = finite.double().abs().max().item() if finite.numel() else 0.0
    budget = 2 * max_abs_err(ref32, ref64) + floor * scale
    err = max_abs_err(kernel, ref64)
    assert err <= budget, f"{what}: kernel error {err:.3e} > budget {budget:.3e} (2x torch's error + {floor:g} x {scale:.3g})"
