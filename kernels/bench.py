"""``segbench bench kernels``: time each Triton kernel against a baseline on a Llama-3.1-8B layout.

Timing is ``triton.testing.do_bench``: the L2 cache is flushed before every call and each
measurement runs the kernel many times (``--warmup``/``--rep`` milliseconds), so neither the
60 MB L2 of an H200 (a decode's K/V at <= 8K keys fits in it) nor host launch cost flatters a row.
Prefill-type rows report TFLOP/s (attended query-key pairs only, 4·D flops each) and the % of a
PyTorch SDPA-flash baseline doing the same attended work; decode-type rows report GB/s of K/V
read, the % of the GPU's HBM bandwidth, and the % of a GQA-native torch baseline (one query per
head over the *unexpanded* K/V: the same bytes). See docs/kernels.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

N_Q_HEADS, N_KV_HEADS, HEAD_DIM = 32, 8, 128  # Llama-3.1-8B
DEFAULT_CONTEXTS = "4096,8192,16384,32768,65536,131072"
KERNELS = ("prefill", "segment", "decode", "segment-decode", "block-sparse", "block-sparse-decode")

# Dense (no sparsity) bf16/fp16 tensor-core peaks, TFLOP/s, matched against torch.cuda.get_device_name.
# Most specific names first: "H100 PCIe" must not match the SXM entry "H100".
PEAK_TFLOPS = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
)
# Datasheet HBM bandwidth, GB/s, matched the same way (decode rows report % of it).
PEAK_HBM_GBPS = (
    ("GH200", 4000.0), ("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
    ("H800", 3350.0), ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0),
    ("L40S", 864.0),
)
NO_CUDA_MESSAGE = (
    "segbench bench kernels needs a CUDA GPU; on this machine run the kernel tests in the Triton "
    "interpreter instead: TRITON_INTERPRET=1 python -m pytest tests/test_kernels_*.py -q"
)


def _lookup(table: tuple[tuple[str, float], ...], device_name: str) -> float | None:
    for key, peak in table:
        if key.lower() in device_name.lower():
            return peak
    return None


def peak_tflops(device_name: str) -> float | None:
    return _lookup(PEAK_TFLOPS, device_name)


def peak_hbm_gbps(device_name: str) -> float | None:
    return _lookup(PEAK_HBM_GBPS, device_name)


@dataclass
class Case:
    """One timed comparison: the kernel call, the baseline call, and the work they each do."""

    kernel: str
    context: int
    pairs: int                     # query-key pairs the kernel attends to (all heads)
    run: Callable[[], object]
    baseline: str
    baseline_run: Callable[[], object] | None
    baseline_pairs: int
    kv_bytes: int = 0              # K/V bytes a decode reads (0 for prefill rows)
    baseline_kv_bytes: int = 0
    note: str = ""

    @property
    def is_decode(self) -> bool:
        return self.kv_bytes > 0


@dataclass
class Row:
    kernel: str
    context: int
    ms: float | None
    tflops: float | None
    pct_peak: float | None         # of the dense bf16/fp16 tensor-core peak (prefill rows)
    baseline: str
    baseline_ms: float | None
    baseline_tflops: float | None
    ratio: float | None            # kernel throughput over baseline throughput (TFLOP/s, or GB/s for decode)
    gb_per_s: float | None = None
    pct_hbm: float | None = None   # of the datasheet HBM bandwidth (decode rows)
    baseline_gb_per_s: float | None = None
    pct_of_baseline: float | None = None  # 100 * ratio: the figure the targets are stated in
    note: str = ""


def time_ms(fn: Callable[[], object], warmup: int, rep: int) -> float:
    """Median ms of ``fn`` by ``triton.testing.do_bench``: ``warmup`` ms of untimed calls (compiles
    included), then ~``rep`` ms of calls, each after an L2 flush, timed with CUDA events."""
    import triton.testing

    fn()  # compile (and autotune) outside do_bench's estimate of the per-call time
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _flash_attn():
    try:
        import flash_attn  # noqa: F401
        from flash_attn import flash_attn_func, flash_attn_with_kvcache

        return flash_attn_func, flash_attn_with_kvcache
    except Exception:  # not installed, or built for another torch: fall back to SDPA
        return None


def _sdpa_flash(q_BHLD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor, causal: bool) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q_BHLD, k_BHLD, v_BHLD, is_causal=causal)


def causal_baseline(pairs_per_head: int, dtype: torch.dtype, device: torch.device) -> tuple[str, Callable, int]:
    """Dense causal flash attention over L x L with L(L+1)/2 ~= ``pairs_per_head``: same attended work.

    Returns (label, thunk, pairs over all heads). K/V are expanded to the query heads beforehand for
    SDPA (its flash path wants equal head counts); flash-attn takes GQA natively.
    """
    length = max(1, round((math.sqrt(8 * pairs_per_head + 1) - 1) / 2))
    q = torch.randn(1, N_Q_HEADS, length, HEAD_DIM, device=device, dtype=dtype)
    fa = _flash_attn()
    if fa is not None:
        k, v = (torch.randn(1, length, N_KV_HEADS, HEAD_DIM, device=device, dtype=dtype) for _ in range(2))
        q_blhd = q.transpose(1, 2).contiguous()
        return f"flash-attn causal L={length}", lambda: fa[0](q_blhd, k, v, causal=True), \
            N_Q_HEADS * length * (length + 1) // 2
    k, v = (torch.randn(1, N_Q_HEADS, length, HEAD_DIM, device=device, dtype=dtype) for _ in range(2))
    return f"sdpa-flash causal L={length}", lambda: _sdpa_flash(q, k, v, True), N_Q_HEADS * length * (length + 1) // 2


def gqa_decode(q_BHD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor) -> torch.Tensor:
    """One query per head over *unexpanded* GQA K/V in plain torch: the group's query heads are the
    rows of one matmul per KV head, so K and V are read once, as a decode kernel must."""
    batch, n_q_heads, head_dim = q_BHD.shape
    n_kv_heads = k_BHLD.shape[1]
    q_BKGD = q_BHD.view(batch, n_kv_heads, n_q_heads // n_kv_heads, head_dim)
    scores_BKGL = (q_BKGD @ k_BHLD.transpose(-1, -2)) * head_dim**-0.5
    work = torch.promote_types(scores_BKGL.dtype, torch.float32)  # softmax at fp32 at least, like the kernel
    out_BKGD = torch.softmax(scores_BKGL.to(work), dim=-1).to(v_BHLD.dtype) @ v_BHLD
    return out_BKGD.reshape(batch, n_q_heads, head_dim)


def decode_baseline(context: int, dtype: torch.dtype, device: torch.device) -> tuple[str, Callable, int]:
    """One token over ``context`` keys: flash-attn's split-KV decode when importable, else the
    GQA-native torch matmul (:func:`gqa_decode`). Both read the K/V once (its bytes are returned);
    SDPA over K/V expanded to every query head would read 4x the bytes and flatter the kernel."""
    fa = _flash_attn()
    kv_bytes = 2 * N_KV_HEADS * context * HEAD_DIM * torch.empty((), dtype=dtype).element_size()
    if fa is not None:
        q = torch.randn(1, 1, N_Q_HEADS, HEAD_DIM, device=device, dtype=dtype)
        k, v = (torch.randn(1, context, N_KV_HEADS, HEAD_DIM, device=device, dtype=dtype) for _ in range(2))
        return "flash-attn kvcache", lambda: fa[1](q, k, v), kv_bytes
    q = torch.randn(1, N_Q_HEADS, HEAD_DIM, device=device, dtype=dtype)
    k, v = (torch.randn(1, N_KV_HEADS, context, HEAD_DIM, device=device, dtype=dtype) for _ in range(2))
    return "torch GQA matmul", lambda: gqa_decode(q, k, v), kv_bytes


def build_cases(kernel: str, context: int, dtype: torch.dtype, args: argparse.Namespace,
                dev: torch.device | None = None) -> list[Case]:
    """The benchmark cases of one kernel at one context length (allocates the inputs on ``dev``, the GPU)."""
    from . import block_sparse, decode_attention, segmented_attention

    dev = dev or torch.device("cuda")

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=dev, dtype=dtype)

    if kernel in ("prefill", "segment"):
        len_q = context if kernel == "prefill" else min(args.segment, context)
        len_vis = context - len_q
        q = randn(1, N_Q_HEADS, len_q, HEAD_DIM)
        k, v = randn(1, N_KV_HEADS, context, HEAD_DIM), randn(1, N_KV_HEADS, context, HEAD_DIM)
        seg_k, seg_v, vis_k, vis_v = k[:, :, len_vis:], v[:, :, len_vis:], k[:, :, :len_vis], v[:, :, :len_vis]
        pairs_per_head = len_q * len_vis + len_q * (len_q + 1) // 2
        label, base, base_pairs = causal_baseline(pairs_per_head, dtype, dev)
        note = "visible 0 (full causal prefill)" if kernel == "prefill" else f"segment {len_q}, visible {len_vis}"
        return [Case(kernel, context, N_Q_HEADS * pairs_per_head,
                     lambda: segmented_attention.segmented_attention(q, seg_k, seg_v, vis_k, vis_v),
                     label, base, base_pairs, note=note)]
    if kernel == "decode":
        q = randn(1, N_Q_HEADS, HEAD_DIM)
        k, v = randn(1, N_KV_HEADS, context, HEAD_DIM), randn(1, N_KV_HEADS, context, HEAD_DIM)
        label, base, base_bytes = decode_baseline(context, dtype, dev)
        return [Case(kernel, context, N_Q_HEADS * context, lambda: decode_attention.decode_attention(q, k, v),
                     label, base, N_Q_HEADS * context, kv_bytes=2 * k.numel() * k.element_size(),
                     baseline_kv_bytes=base_bytes)]
    if kernel == "segment-decode":
        # A decode step of chunked full attention through segmented_attention's few-query path:
        # one query over (context - seg) visible keys plus the open segment's seg keys.
        seg = max(1, min(args.segment, context) // 2)
        q = randn(1, N_Q_HEADS, 1, HEAD_DIM)
        k, v = randn(1, N_KV_HEADS, context, HEAD_DIM), randn(1, N_KV_HEADS, context, HEAD_DIM)
        cut = context - seg
        label, base, base_bytes = decode_baseline(context, dtype, dev)
        return [Case(kernel, context, N_Q_HEADS * context,
                     lambda: segmented_attention.segmented_attention(q, k[:, :, cut:], v[:, :, cut:],
                                                                     k[:, :, :cut], v[:, :, :cut]),
                     label, base, N_Q_HEADS * context, kv_bytes=2 * k.numel() * k.element_size(),
                     baseline_kv_bytes=base_bytes, note=f"visible {cut}, segment {seg} (few-query path)")]
    pattern = (args.sink_blocks, args.local_blocks, args.stride)
    bsz = args.block_size
    if kernel == "block-sparse":
        q = randn(1, N_Q_HEADS, context, HEAD_DIM)
        k, v = randn(1, N_KV_HEADS, context, HEAD_DIM), randn(1, N_KV_HEADS, context, HEAD_DIM)
        pairs = N_Q_HEADS * block_sparse.attended_pairs(context, bsz, *pattern)
        density = pairs / (N_Q_HEADS * context * (context + 1) / 2)
        # Dense causal over the same length: the speedup target is 0.7 / density.
        label, base, base_pairs = causal_baseline(context * (context + 1) // 2, dtype, dev)
        return [Case(kernel, context, pairs,
                     lambda: block_sparse.block_sparse_attention(q, k, v, *pattern, block_size=bsz),
                     label, base, base_pairs,
                     note=f"density {density:.3f}, target {0.7 / density:.1f}x")]
    if kernel == "block-sparse-decode":
        q = randn(1, N_Q_HEADS, HEAD_DIM)
        k, v = randn(1, N_KV_HEADS, context, HEAD_DIM), randn(1, N_KV_HEADS, context, HEAD_DIM)
        n_blocks = -(-context // bsz)
        row = block_sparse.block_mask(1, n_blocks, *pattern)[0]
        keys = int(row.sum()) * bsz - (n_blocks * bsz - context)  # the last (kept) block may be ragged
        label, base, base_bytes = decode_baseline(context, dtype, dev)
        return [Case(kernel, context, N_Q_HEADS * keys,
                     lambda: block_sparse.block_sparse_decode(q, k, v, *pattern, block_size=bsz),
                     label + " (dense)", base, N_Q_HEADS * context,
                     kv_bytes=2 * N_KV_HEADS * keys * HEAD_DIM * k.element_size(),
                     baseline_kv_bytes=base_bytes, note=f"{keys} of {context} keys")]
    raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")


def measure(case: Case, peak: float | None, warmup: int, rep: int, hbm: float | None = None,
            timer: Callable[[Callable[[], object], int, int], float] = time_ms) -> Row:
    """Time the kernel and its baseline with ``timer`` (do_bench; tests pass a fake) into a Row."""
    flops = 4 * HEAD_DIM * case.pairs
    ms = timer(case.run, warmup, rep)
    tflops = flops / (ms * 1e-3) / 1e12
    base_ms = timer(case.baseline_run, warmup, rep) if case.baseline_run is not None else None
    base_tflops = 4 * HEAD_DIM * case.baseline_pairs / (base_ms * 1e-3) / 1e12 if base_ms else None
    gbps = case.kv_bytes / (ms * 1e-3) / 1e9 if case.kv_bytes else None
    base_gbps = case.baseline_kv_bytes / (base_ms * 1e-3) / 1e9 if case.baseline_kv_bytes and base_ms else None
    if case.kernel.startswith("block-sparse") and base_ms:
        # Sparse vs dense: the kernel does less work on purpose, so the useful ratio is time.
        ratio = base_ms / ms
        note = f"{case.note}; {ratio:.1f}x vs dense"
    elif case.is_decode:
        ratio, note = (gbps / base_gbps if base_gbps else None), case.note
    else:
        ratio, note = (tflops / base_tflops if base_tflops else None), case.note
    return Row(
        kernel=case.kernel, context=case.context, ms=ms, tflops=tflops,
        pct_peak=100 * tflops / peak if peak and not case.is_decode else None,
        baseline=case.baseline, baseline_ms=base_ms, baseline_tflops=base_tflops,
        ratio=ratio, gb_per_s=gbps, pct_hbm=100 * gbps / hbm if gbps and hbm else None,
        baseline_gb_per_s=base_gbps, pct_of_baseline=100 * ratio if ratio is not None else None, note=note,
    )


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def print_table(rows: list[Row], device_name: str, dtype: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"segbench kernels on {device_name} ({dtype}, Hq={N_Q_HEADS} Hkv={N_KV_HEADS} D={HEAD_DIM}; "
                        "do_bench, L2 flushed)")
    for col in ("kernel", "context", "ms", "TFLOP/s", "% peak", "GB/s", "% HBM", "baseline", "base ms",
                "% of base", "note"):
        table.add_column(col, justify="left" if col in ("kernel", "baseline", "note") else "right")
    for r in rows:
        table.add_row(r.kernel, str(r.context), _fmt(r.ms, ".3f"), _fmt(r.tflops, ".1f"), _fmt(r.pct_peak, ".1f"),
                      _fmt(r.gb_per_s, ".0f"), _fmt(r.pct_hbm, ".1f"), r.baseline, _fmt(r.baseline_ms, ".3f"),
                      _fmt(r.pct_of_baseline, ".0f"), r.note)
    # Piped output would otherwise wrap at 80 columns; a terminal keeps its own width.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def run(args: argparse.Namespace, deadline: Callable[[], bool] = lambda: False) -> list[Row]:
    """Every (kernel, context) row; stops starting new rows once ``deadline()`` is true."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    device_name = torch.cuda.get_device_name()
    peak, hbm = peak_tflops(device_name), peak_hbm_gbps(device_name)
    rows: list[Row] = []
    torch.manual_seed(0)
    for kernel in kernels:
        for context in contexts:
            if deadline():
                rows.append(Row(kernel, context, None, None, None, "", None, None, None, note="skipped: wall budget"))
                continue
            try:
                for case in build_cases(kernel, context, dtype, args):
                    rows.append(measure(case, peak, args.warmup, args.rep, hbm))
            except torch.cuda.OutOfMemoryError:
                rows.append(Row(kernel, context, None, None, None, "", None, None, None, note="out of memory"))
            except Exception as exc:  # one failing kernel or baseline should not hide the other rows
                rows.append(Row(kernel, context, None, None, None, "", None, None, None,
                                note=f"error: {type(exc).__name__}: {str(exc)[:120]}"))
            torch.cuda.empty_cache()
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segbench bench kernels", description=__doc__.split("\n")[0])
    p.add_argument("--contexts", default=DEFAULT_CONTEXTS, help="comma-separated context lengths")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    p.add_argument("--kernels", default=",".join(KERNELS), help=f"subset of {','.join(KERNELS)}")
    p.add_argument("--segment", type=int, default=4096, help="segment (query chunk) length of the segment rows")
    p.add_argument("--block-size", type=int, default=64, help="block-sparse block size")
    p.add_argument("--sink-blocks", type=int, default=1)
    p.add_argument("--local-blocks", type=int, default=16)
    p.add_argument("--stride", type=int, default=16, help="block-sparse vertical stride (0: none)")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, milliseconds")
    p.add_argument("--rep", "--reps", type=int, default=100, dest="rep", help="do_bench measuring time, milliseconds")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--budget-s", type=float, help="start no new row after this many seconds (gpu-check)")
    return p


def write_json(path: str, rows: list[Row], args: argparse.Namespace) -> None:
    device_name = torch.cuda.get_device_name()
    with open(path, "w") as f:
        json.dump({"device": device_name, "peak_tflops": peak_tflops(device_name),
                   "peak_hbm_gbps": peak_hbm_gbps(device_name), "dtype": args.dtype,
                   "timing": f"triton.testing.do_bench median, L2 flushed, warmup {args.warmup} ms, rep {args.rep} ms",
                   "layout": {"q_heads": N_Q_HEADS, "kv_heads": N_KV_HEADS, "head_dim": HEAD_DIM},
                   "rows": [asdict(r) for r in rows]}, f, indent=2)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE)
        return 2
    from ._triton import HAS_TRITON, INTERPRETED

    if not HAS_TRITON or INTERPRETED:
        print("segbench bench kernels needs triton compiled for the GPU: install triton and unset TRITON_INTERPRET")
        return 2
    for k in args.kernels.split(","):
        if k.strip() and k.strip() not in KERNELS:
            p.error(f"unknown kernel {k.strip()!r}; choose from {', '.join(KERNELS)}")
    import time

    stop_at = time.monotonic() + args.budget_s if args.budget_s else float("inf")
    rows = run(args, deadline=lambda: time.monotonic() > stop_at)
    print_table(rows, torch.cuda.get_device_name(), args.dtype)
    if args.json:
        write_json(args.json, rows, args)
    return 0
