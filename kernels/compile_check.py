"""Compile every kernel for an NVIDIA GPU on a machine without one: ``python -m segbench.kernels.compile_check``.

The CPU interpreter runs the kernels' Python, not Triton's compiler, so it cannot catch what only
compilation finds (globals a kernel may not read, layouts that do not lower, tiles that overflow
shared memory, register spills). This tool runs the real launchers on CPU tensors with their GPU
default configuration, records each kernel launch instead of performing it, and compiles that exact
launch ahead of time for the target (``sm_90`` by default) with the ptxas bundled in triton. It
mimics Triton's launch-time specialisation (integers equal to 1 become constants, multiples of 16
are marked divisible) so the code compiled is the code a GPU would run.

It prints one row per kernel variant: registers per thread, spill stack bytes and shared memory, and
exits 1 when a variant fails to compile or needs more shared memory than the target has.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

# Kernels are decorated when their module is imported: they must be real JIT functions here.
if "segbench.kernels._triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "0"

SHARED_LIMIT = {90: 232448, 89: 101376, 86: 101376, 80: 166912}  # max dynamic shared bytes per block
_TRITON_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
                  torch.int8: "i8", torch.int32: "i32", torch.int64: "i64"}


@dataclass
class Result:
    name: str
    regs: int
    stack: int
    shared: int
    error: str = ""


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` only records the call."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.calls: list[tuple[tuple, dict]] = []

    def __getitem__(self, _grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _compile(kernel, args: tuple, kwargs: dict, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    names = kernel.arg_names
    values = dict(zip(names, args, strict=False)) | kwargs
    # Arguments marked do_not_specialize (lengths) compile as plain i32 whatever their value.
    raw = getattr(kernel, "do_not_specialize", None) or []
    fixed = {names[i] if isinstance(i, int) else i for i in raw}
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        value = values[name]
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif name in kwargs or isinstance(value, (bool, str)):
            signature[name], constexprs[(i,)] = "constexpr", value
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif isinstance(value, int) and name in fixed:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, int) and value == 1:
            signature[name], constexprs[(i,)] = "constexpr", 1  # Triton specialises ints equal to 1
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise TypeError(f"{kernel.fn.__name__}: cannot type argument {name}={value!r}")
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def _resources(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack bytes) from cuobjdump; stack > 0 means spills (we use no local arrays)."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def _variants(dtypes: list[torch.dtype], head_dims: list[int]) -> list[tuple[str, Callable[[], None]]]:
    """(name, thunk) pairs; each thunk calls a public launcher with GPU defaults on tiny CPU tensors."""
    from . import block_sparse as bs
    from . import decode_attention as da
    from . import segmented_attention as sa

    out = []
    for dtype in dtypes:
        for d in head_dims:
            tag = f"{_TRITON_DTYPES[dtype]} D={d}"
            q, kv, vis = (torch.zeros(*shape, dtype=dtype) for shape in ((1, 4, 40, d), (1, 1, 40, d), (1, 1, 30, d)))
            q_dec, kv_dec, q_one = (torch.zeros(*shape, dtype=dtype) for shape in ((2, 8, d), (2, 1, 300, d), (1, 4, d)))
            bm, bn, warps, stages = sa.default_config(dtype, d, "cuda")
            cfg = dict(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages)
            block_n, warps, stages = da.default_config(dtype, d, "cuda")
            dcfg = dict(block_n=block_n, num_warps=warps, num_stages=stages, num_splits=2)
            q_few = torch.zeros(1, 4, 1, d, dtype=dtype)  # one decode token: the few-query path
            out += [
                (f"segmented {tag}", partial(sa.segmented_attention, q, kv, kv, **cfg)),
                (f"segmented+B+lse {tag}", partial(sa.segmented_attention_lse, q, kv, kv, vis, vis, vis, vis,
                                                   torch.tensor([True]), **cfg)),
                (f"decode+merge {tag}", partial(da.decode_attention, q_dec, kv_dec, kv_dec, torch.tensor([300, 7]),
                                                **dcfg)),
                (f"segmented-decode {tag}", partial(sa.segmented_attention_lse, q_few, kv, kv, vis, vis, vis, vis,
                                                    torch.tensor([True]))),
            ]
            # Every pattern block the kernels accept maps to a tile they can hold: try them all
            # (256 at D=128 and 128 at D=256 were OutOfResources when the tile was the block).
            for block in (16, 32, 64, 128, 256):
                out += [
                    (f"block-sparse {tag} block={block}", partial(bs.block_sparse_attention, q, kv, kv, 1, 2, 4,
                                                                  block_size=block)),
                    (f"block-sparse decode {tag} block={block}", partial(bs.block_sparse_decode, q_one, kv, kv, 1, 2, 4,
                                                                         block_size=block, num_splits=1)),
                ]
    return out


def check(dtypes: list[torch.dtype], head_dims: list[int], arch: int = 90,
          only: set[str] | None = None) -> Iterator[Result]:
    """Compile each variant's launches for ``sm_{arch}``, yielding as it goes; a failing kernel is
    reported in its Result, not raised."""
    from . import _triton, block_sparse, decode_attention, segmented_attention

    if _triton.INTERPRETED or not _triton.HAS_TRITON:
        raise RuntimeError("compile_check needs triton and TRITON_INTERPRET unset before the kernels are imported")
    kernels = (
        (segmented_attention, "_segmented_fwd_kernel"), (segmented_attention, "_segmented_split_kernel"),
        (decode_attention, "_decode_split_kernel"),
        (decode_attention, "_merge_splits_kernel"), (block_sparse, "_block_sparse_fwd_kernel"),
    )
    recorders = {(m, n): _Recorder(getattr(m, n)) for m, n in kernels}
    modules = (segmented_attention, decode_attention, block_sparse)
    patched = [(m, "require", m.require) for m in modules] + [(m, "target", m.target) for m in modules]
    try:
        for (m, n), rec in recorders.items():
            setattr(m, n, rec)
        for m in modules:
            m.require = lambda *tensors: None  # the launch is recorded, not run: any device will do
            m.target = lambda device: "cuda"  # ...with the tile configs a GPU would use
        for name, thunk in _variants(dtypes, head_dims):
            if only is not None and name.split(" ")[0] not in only:
                continue
            for rec in recorders.values():
                rec.calls.clear()
            thunk()
            for rec in recorders.values():
                for args, kwargs in rec.calls:
                    label = f"{name}: {rec.kernel.fn.__name__}"
                    try:
                        compiled = _compile(rec.kernel, args, kwargs, arch)
                        regs, stack = _resources(compiled.asm["cubin"])
                        result = Result(label, regs, stack, compiled.metadata.shared)
                    except Exception as exc:  # report every failing variant, not just the first
                        result = Result(label, -1, -1, -1, f"{type(exc).__name__}: {str(exc)[-300:]}")
                    yield result
    finally:
        for (m, n), rec in recorders.items():
            setattr(m, n, rec.kernel)
        for m, attr, original in patched:
            setattr(m, attr, original)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segbench.kernels.compile_check", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100/H200)")
    parser.add_argument("--dtypes", default="bf16,fp16,fp32")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--only", help="comma-separated variants: segmented, segmented+B+lse, segmented-decode, "
                        "decode+merge, block-sparse (prefill and decode, every block size)")
    args = parser.parse_args(argv)
    by_name = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dtypes = [by_name[x] for x in args.dtypes.split(",")]
    head_dims = [int(x) for x in args.head_dims.split(",")]
    limit = SHARED_LIMIT.get(args.arch, 101376)
    bad = 0
    only = set(args.only.split(",")) if args.only else None
    for r in check(dtypes, head_dims, args.arch, only):
        if r.error or r.shared > limit:
            bad += 1
            print(f"FAIL {r.name}: {r.error or f'shared {r.shared} > {limit}'}", flush=True)
        else:
            spill = "  (spills)" if r.stack > 0 else ""
            print(f"ok   {r.name}: {r.regs} regs, stack {r.stack} B, shared {r.shared} B{spill}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
