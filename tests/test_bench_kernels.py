"""GPU benchmarks (pytest-benchmark) and bf16 accuracy of the Triton kernels, plus the CLI's no-GPU path.

Run on a GPU: ``python -m pytest tests/test_bench_kernels.py -m gpu``. The kernels must be compiled
for real here, so this module imports them at collection, before the interpreter test files set
TRITON_INTERPRET; if they were already imported in interpreter mode the GPU tests skip.
"""

import pytest
import torch
from segbench.kernels import bench

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
KERNELS_SKIP = None
if torch.cuda.is_available():  # import (and so decorate) the kernels now, in compiler mode
    try:
        from segbench.kernels import _triton
        from segbench.kernels.block_sparse import block_sparse_attention, block_sparse_decode, token_mask
        from segbench.kernels.decode_attention import decode_attention
        from segbench.kernels.segmented_attention import segmented_attention
    except ImportError:
        KERNELS_SKIP = "needs triton"
    else:
        if not _triton.HAS_TRITON:
            KERNELS_SKIP = "needs triton"
        elif _triton.INTERPRETED:
            KERNELS_SKIP = "kernels were imported in interpreter mode: run this file on its own"
kernels_compiled = pytest.mark.skipif(KERNELS_SKIP is not None, reason=KERNELS_SKIP or "")

HQ, HKV, D = bench.N_Q_HEADS, bench.N_KV_HEADS, bench.HEAD_DIM
PATTERN = (1, 16, 16)  # sink, local, stride in blocks of 64: the bench defaults


def test_cli_without_cuda_prints_one_line_and_returns_2(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--contexts", "4096"]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "CUDA" in out and "TRITON_INTERPRET=1" in out


def test_peak_lookup_prefers_the_specific_name():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA H200") == 989.0
    assert bench.peak_tflops("Tesla T4") is None


def test_peak_hbm_lookup():
    assert bench.peak_hbm_gbps("NVIDIA H200") == 4800.0
    assert bench.peak_hbm_gbps("NVIDIA H100 80GB HBM3") == 3350.0
    assert bench.peak_hbm_gbps("NVIDIA H100 PCIe") == 2000.0
    assert bench.peak_hbm_gbps("Tesla T4") is None


def test_gqa_decode_baseline_is_attention_over_unexpanded_kv():
    """The decode baseline computes the same attention as the reference, reading K/V as [B, Hkv, L, D]."""
    from segbench.kernels.decode_attention import decode_attention_ref

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 64, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 33, 64, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(bench.gqa_decode(q, k, v), decode_attention_ref(q, k, v)[0], rtol=1e-12, atol=1e-12)


def _fake_timer(times):
    """do_bench stand-in: returns the next of ``times`` (ms) and records that the thunk was passed."""
    seen = []

    def timer(fn, warmup, rep):
        seen.append(fn)
        return times[len(seen) - 1]

    return timer, seen


def test_measure_prefill_row_is_tflops_and_percent_of_baseline():
    pairs = 10**9
    case = bench.Case("prefill", 4096, pairs, lambda: "kernel", "sdpa-flash", lambda: "base", pairs)
    timer, seen = _fake_timer([2.0, 1.0])
    row = bench.measure(case, 1000.0, 25, 100, hbm=4800.0, timer=timer)
    flops = 4 * bench.HEAD_DIM * pairs
    assert [f() for f in seen] == ["kernel", "base"]
    assert row.tflops == pytest.approx(flops / 2e-3 / 1e12)
    assert row.pct_peak == pytest.approx(100 * row.tflops / 1000.0)
    assert row.pct_of_baseline == pytest.approx(50.0) and row.ratio == pytest.approx(0.5)
    assert row.gb_per_s is None and row.pct_hbm is None


def test_measure_decode_row_is_gbps_and_percent_of_hbm_and_baseline():
    kv = 2 * 8 * 131072 * 128 * 2  # 512 MiB of bf16 K/V at 128K
    case = bench.Case("decode", 131072, 32 * 131072, lambda: None, "torch GQA matmul", lambda: None, 32 * 131072,
                      kv_bytes=kv, baseline_kv_bytes=kv)
    timer, _ = _fake_timer([0.25, 0.5])
    row = bench.measure(case, 989.0, 25, 100, hbm=4800.0, timer=timer)
    assert row.gb_per_s == pytest.approx(kv / 0.25e-3 / 1e9)
    assert row.pct_hbm == pytest.approx(100 * row.gb_per_s / 4800.0)
    assert row.baseline_gb_per_s == pytest.approx(kv / 0.5e-3 / 1e9)
    assert row.pct_of_baseline == pytest.approx(200.0)
    assert row.pct_peak is None  # a memory-bound row is not judged against the tensor-core peak


def test_bench_times_with_do_bench():
    """The timer is triton's do_bench (L2 flushed, many calls), not one call per event pair."""
    import inspect

    assert "do_bench" in inspect.getsource(bench.time_ms)
    assert bench.measure.__defaults__[-1] is bench.time_ms


def _randn(*shape):
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)


def _bench(benchmark, fn):
    def run():
        fn()
        torch.cuda.synchronize()

    run()  # compile outside the timed rounds
    benchmark.pedantic(run, rounds=10, warmup_rounds=2, iterations=1)


def _sdpa(q, k, v, mask=None, dtype=torch.float32):
    """Plain SDPA at ``dtype`` with K/V expanded to the query heads; ``mask`` True = attend."""
    group = q.shape[1] // k.shape[1]
    k, v = (x.repeat_interleave(group, dim=1).to(dtype) for x in (k, v))
    return torch.nn.functional.scaled_dot_product_attention(q.to(dtype), k, v, attn_mask=mask)


def _assert_bf16_rule(out, q, k, v, mask, what):
    """Kernel (bf16) error vs fp32 SDPA <= 2x the error of SDPA itself in bf16, plus a floor of 1e-3
    of the output's magnitude (relative: an absolute 1e-3 would depend on the inputs' scale)."""
    ref32 = _sdpa(q, k, v, mask).float()
    torch_err = (_sdpa(q, k, v, mask, torch.bfloat16).float() - ref32).abs().max().item()
    err = (out.float() - ref32).abs().max().item()
    floor = 1e-3 * ref32.abs().max().item()
    assert err <= 2 * torch_err + floor, f"{what}: {err:.3e} vs torch bf16 {torch_err:.3e} (+ {floor:.1e})"


@pytest.mark.gpu
@no_cuda
@kernels_compiled
@pytest.mark.parametrize("len_vis, len_q", [(0, 4096), (12288, 4096)])
def test_segmented_bf16_accuracy_and_speed(benchmark, len_vis, len_q):
    q = _randn(1, HQ, len_q, D)
    k, v = _randn(1, HKV, len_vis + len_q, D), _randn(1, HKV, len_vis + len_q, D)
    args = (q, k[:, :, len_vis:], v[:, :, len_vis:], k[:, :, :len_vis], v[:, :, :len_vis])
    pos = torch.arange(len_vis + len_q, device="cuda")
    mask = pos[None, :] <= pos[len_vis:, None]  # bottom-right causal over [visible; segment]
    _assert_bf16_rule(segmented_attention(*args), q, k, v, mask, f"segmented vis={len_vis}")
    _bench(benchmark, lambda: segmented_attention(*args))


@pytest.mark.gpu
@no_cuda
@kernels_compiled
@pytest.mark.parametrize("context", [131072])
def test_decode_bf16_accuracy_and_speed(benchmark, context):
    q = _randn(1, HQ, 1, D)
    k, v = _randn(1, HKV, context, D), _randn(1, HKV, context, D)
    _assert_bf16_rule(decode_attention(q, k, v), q, k, v, None, "decode")
    _bench(benchmark, lambda: decode_attention(q, k, v))


@pytest.mark.gpu
@no_cuda
@kernels_compiled
@pytest.mark.parametrize("context", [8192])
def test_block_sparse_bf16_accuracy_and_speed(benchmark, context):
    q = _randn(1, HQ, context, D)
    k, v = _randn(1, HKV, context, D), _randn(1, HKV, context, D)
    mask = token_mask(context, context, 64, *PATTERN, device="cuda")
    _assert_bf16_rule(block_sparse_attention(q, k, v, *PATTERN), q, k, v, mask, "block-sparse")
    _assert_bf16_rule(block_sparse_decode(q[:, :, -1:], k, v, *PATTERN), q[:, :, -1:], k, v, mask[-1:], "sparse decode")
    _bench(benchmark, lambda: block_sparse_attention(q, k, v, *PATTERN))


@pytest.mark.gpu
@no_cuda
@kernels_compiled
@pytest.mark.parametrize("len_vis, len_seg", [(2048, 1), (2048, 3000), (126976, 4096)])
def test_segmented_decode_bf16_accuracy_and_speed(benchmark, len_vis, len_seg):
    """One query through segmented_attention's few-query path (a decode step of the method)."""
    q = _randn(1, HQ, 1, D)
    k, v = _randn(1, HKV, len_vis + len_seg, D), _randn(1, HKV, len_vis + len_seg, D)
    args = (q, k[:, :, len_vis:], v[:, :, len_vis:], k[:, :, :len_vis], v[:, :, :len_vis])
    _assert_bf16_rule(segmented_attention(*args), q, k, v, None, f"segmented decode vis={len_vis} seg={len_seg}")
    _bench(benchmark, lambda: segmented_attention(*args))


@pytest.mark.gpu
@no_cuda
@kernels_compiled
@pytest.mark.parametrize("block", [128, 256])
def test_block_sparse_large_blocks_run_on_the_gpu(block):
    """Blocks 128/256 at D=128 ran out of shared memory when the tile was the block; now tiles."""
    q = _randn(1, HQ, 4096, D)
    k, v = _randn(1, HKV, 4096, D), _randn(1, HKV, 4096, D)
    pattern = (1, 2, 4)
    mask = token_mask(4096, 4096, block, *pattern, device="cuda")
    _assert_bf16_rule(block_sparse_attention(q, k, v, *pattern, block_size=block), q, k, v, mask, f"block {block}")
    _assert_bf16_rule(block_sparse_decode(q[:, :, -1:], k, v, *pattern, block_size=block), q[:, :, -1:], k, v,
                      mask[-1:], f"sparse decode block {block}")
