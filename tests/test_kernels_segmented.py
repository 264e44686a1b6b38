"""Segmented attention kernel vs its plain-torch reference (CPU interpreter, or CUDA when compiled)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere in this process

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from segbench.kernels.testing import assert_within_rule, kernel_test_device  # noqa: E402

DEVICE = kernel_test_device()

from segbench.kernels.segmented_attention import (  # noqa: E402
    segmented_attention,
    segmented_attention_lse,
    segmented_attention_ref,
)


def _randn(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _check(args64: list, kwargs: dict | None = None, *, blocks: tuple[int, int] = (16, 16), what: str) -> None:
    """Run kernel (fp32) and references (fp32, fp64) on the same inputs; hold out and lse to the rule."""
    kwargs = kwargs or {}
    args32 = [a.float() if a is not None and a.is_floating_point() else a for a in args64]
    ref64 = segmented_attention_ref(*args64, **kwargs)
    ref32 = segmented_attention_ref(*args32, **kwargs)
    on_dev = [a.to(DEVICE) if a is not None else None for a in args32]
    out, lse = segmented_attention_lse(*on_dev, **kwargs, block_m=blocks[0], block_n=blocks[1])
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert_within_rule(out.cpu(), ref32[0], ref64[0], f"{what} out")
    assert_within_rule(lse.cpu(), ref32[1], ref64[1], f"{what} lse")
    # The out-only entry point runs the WRITE_LSE=False specialisation: it must agree exactly.
    only_out = segmented_attention(*on_dev, **kwargs, block_m=blocks[0], block_n=blocks[1])
    torch.testing.assert_close(only_out, out, rtol=0, atol=0)


@pytest.mark.parametrize(
    "n_q_heads, n_kv_heads, head_dim, len_q, len_vis, blocks",
    [
        (2, 2, 64, 37, 0, (16, 16)),     # GQA 1, empty visible part, ragged segment
        (4, 1, 128, 50, 21, (16, 16)),   # GQA 4, D=128, short ragged visible part
        (8, 1, 64, 20, 90, (16, 16)),    # GQA 8, visible part longer than the segment
        (4, 2, 64, 45, 33, (32, 16)),    # BLOCK_M > BLOCK_N: several diagonal key blocks per query block
        (2, 1, 128, 33, 40, (16, 32)),   # BLOCK_N > BLOCK_M: one key block spans two query blocks
    ],
)
def test_one_visible_set(n_q_heads, n_kv_heads, head_dim, len_q, len_vis, blocks):
    gen = torch.Generator().manual_seed(len_q * 131 + len_vis)
    q = _randn(1, n_q_heads, len_q, head_dim, gen=gen)
    k, v = (_randn(1, n_kv_heads, len_q, head_dim, gen=gen) for _ in range(2))
    k_vis, v_vis = (_randn(1, n_kv_heads, len_vis, head_dim, gen=gen) for _ in range(2))
    _check([q, k, v, k_vis, v_vis], blocks=blocks, what=f"Hq={n_q_heads} Hkv={n_kv_heads} D={head_dim}")


@pytest.mark.parametrize("head_dim, group, uses_b", [(64, 4, [True, False, False, True]), (128, 8, [False, True])])
def test_per_head_visible_sets(head_dim, group, uses_b):
    """KV heads flagged True read set B (retrieved prefix, longer than the segment), the others set A (tail)."""
    gen = torch.Generator().manual_seed(head_dim + group)
    n_kv_heads, len_q = len(uses_b), 29
    q = _randn(1, n_kv_heads * group, len_q, head_dim, gen=gen)
    k, v = (_randn(1, n_kv_heads, len_q, head_dim, gen=gen) for _ in range(2))
    k_a, v_a = (_randn(1, n_kv_heads, 11, head_dim, gen=gen) for _ in range(2))
    k_b, v_b = (_randn(1, n_kv_heads, 70, head_dim, gen=gen) for _ in range(2))
    _check([q, k, v, k_a, v_a, k_b, v_b, torch.tensor(uses_b)], what=f"per-head sets D={head_dim} G={group}")


def test_per_head_sets_with_empty_tail_and_batch():
    """B=2, set A empty (length 0) for the heads that use it: they see only the segment."""
    gen = torch.Generator().manual_seed(7)
    q = _randn(2, 4, 18, 64, gen=gen)
    k, v = (_randn(2, 2, 18, 64, gen=gen) for _ in range(2))
    k_a, v_a = (_randn(2, 2, 0, 64, gen=gen) for _ in range(2))
    k_b, v_b = (_randn(2, 2, 35, 64, gen=gen) for _ in range(2))
    _check([q, k, v, k_a, v_a, k_b, v_b, torch.tensor([False, True])], what="empty A, B=2")


def test_segment_longer_than_queries_and_custom_scale():
    """Ls > Lq: bottom-right causal (query i sees segment keys <= i + Ls - Lq); explicit sm_scale."""
    gen = torch.Generator().manual_seed(3)
    q = _randn(1, 4, 19, 64, gen=gen)
    k, v = (_randn(1, 2, 40, 64, gen=gen) for _ in range(2))
    k_vis, v_vis = (_randn(1, 2, 9, 64, gen=gen) for _ in range(2))
    _check([q, k, v, k_vis, v_vis], {"sm_scale": 0.3}, what="Ls > Lq")


def test_chunked_prefill_equals_full_causal_attention():
    """visible = all earlier KV, segment = the chunk: the chunk's rows of full causal attention."""
    gen = torch.Generator().manual_seed(11)
    seq, start = 70, 43
    q = _randn(1, 8, seq, 64, gen=gen)
    k, v = (_randn(1, 2, seq, 64, gen=gen) for _ in range(2))
    full64 = segmented_attention_ref(q, k, v)[0][:, :, start:]
    full32 = segmented_attention_ref(q.float(), k.float(), v.float())[0][:, :, start:]
    qd, kd, vd = (x.float().to(DEVICE) for x in (q, k, v))
    # Views of one cache tensor: strides are passed through, nothing is copied or concatenated.
    out = segmented_attention(qd[:, :, start:], kd[:, :, start:], vd[:, :, start:], kd[:, :, :start], vd[:, :, :start])
    assert_within_rule(out.cpu(), full32, full64, "chunked prefill")


def test_non_contiguous_hf_layout():
    """[B, L, H, D] tensors viewed as [B, H, L, D] (transposed strides) work without copies."""
    gen = torch.Generator().manual_seed(5)
    q = _randn(1, 24, 4, 64, gen=gen).transpose(1, 2)
    k, v = (_randn(1, 24, 2, 64, gen=gen).transpose(1, 2) for _ in range(2))
    k_vis, v_vis = (_randn(1, 13, 2, 64, gen=gen).transpose(1, 2) for _ in range(2))
    assert not q.is_contiguous()
    _check([q, k, v, k_vis, v_vis], what="non-contiguous")


def test_rejects_inconsistent_arguments():
    q = torch.zeros(1, 4, 8, 64, device=DEVICE)
    kv = torch.zeros(1, 2, 8, 64, device=DEVICE)
    with pytest.raises(ValueError, match="head_uses_b_H"):
        segmented_attention(q, kv, kv, None, None, kv, kv)  # set B without the per-head choice
    with pytest.raises(ValueError, match="multiple"):
        segmented_attention(q, torch.zeros(1, 3, 8, 64, device=DEVICE), torch.zeros(1, 3, 8, 64, device=DEVICE))
    with pytest.raises(ValueError, match="cover"):
        segmented_attention(q, kv[:, :, :5], kv[:, :, :5])


def test_refuses_slices_beyond_int32_offsets():
    """In-slice offsets are int32: a (batch, head) slice spanning 2^31 elements must be refused."""
    from segbench.kernels._triton import check_offsets

    huge = torch.empty(1, 1, 3, 64, device="meta").as_strided((1, 1, 3, 64), (0, 0, 2**30, 1))
    with pytest.raises(ValueError, match="2\\^31"):
        check_offsets(huge)
    check_offsets(huge[:, :, :2])  # 2^30 + 63: fine


# --- the few-query (split-KV) path behind the same entry point ---------------------------------


def _run_path(path: str, args: list, **kw):
    from segbench.kernels.segmented_attention import _segmented

    full = list(args) + [None] * (8 - len(args))
    return _segmented(*full, kw.get("sm_scale"), True, None, kw.get("block_n", 16), None, None, path=path)


@pytest.mark.parametrize(
    "n_q_heads, n_kv_heads, len_q, len_seg, len_a, len_b, uses_b",
    [
        (8, 2, 1, 1, 0, None, None),          # the first token of a segment, nothing visible
        (8, 2, 1, 37, 50, None, None),        # a decode step: GQA 4 packed into one tile, tail 50
        (4, 1, 3, 20, 0, 70, [True]),         # 3 queries (rows 12), long-range head over the prefix
        (8, 2, 2, 9, 21, 45, [False, True]),  # per-head sets, a split boundary inside each set
        (16, 1, 4, 40, 33, None, None),       # GQA 16 x 4 queries = 64 rows: the path's widest tile
    ],
)
def test_few_query_path_matches_reference(n_q_heads, n_kv_heads, len_q, len_seg, len_a, len_b, uses_b):
    gen = torch.Generator().manual_seed(len_seg * 7 + len_a)
    q = _randn(1, n_q_heads, len_q, 64, gen=gen)
    k, v = (_randn(1, n_kv_heads, len_seg, 64, gen=gen) for _ in range(2))
    args = [q, k, v]
    if len_a or len_b is not None:
        args += [_randn(1, n_kv_heads, len_a, 64, gen=gen) for _ in range(2)]
    if len_b is not None:
        args += [_randn(1, n_kv_heads, len_b, 64, gen=gen) for _ in range(2)] + [torch.tensor(uses_b)]
    group = n_q_heads // n_kv_heads
    assert len_q * group <= 64  # so the public entry point takes the few-query path, as checked by _check
    _check(args, what=f"few-query Lq={len_q} G={group} A={len_a} B={len_b}")


def test_both_paths_agree_where_either_could_run():
    """The same call forced through the prefill kernel and the split-KV path: the same attention."""
    gen = torch.Generator().manual_seed(21)
    q = _randn(1, 4, 5, 64, gen=gen).float()
    k, v = (_randn(1, 2, 30, 64, gen=gen).float() for _ in range(2))
    ka, va = (_randn(1, 2, 17, 64, gen=gen).float() for _ in range(2))
    args = [x.to(DEVICE) for x in (q, k, v, ka, va)]
    few_out, few_lse = _run_path("few", args)
    pre_out, pre_lse = _run_path("prefill", args)
    ref64 = segmented_attention_ref(*(x.double() for x in (q, k, v, ka, va)))
    ref32 = segmented_attention_ref(q, k, v, ka, va)
    for out, lse, what in ((few_out, few_lse, "few"), (pre_out, pre_lse, "prefill")):
        assert_within_rule(out.cpu(), ref32[0], ref64[0], f"{what} out")
        assert_within_rule(lse.cpu(), ref32[1], ref64[1], f"{what} lse")


def test_lengths_are_not_specialised():
    """A decode step of length 1 must not compile a new kernel variant (Triton specialises ints == 1)."""
    from segbench.kernels import decode_attention as da
    from segbench.kernels import segmented_attention as sa

    for kernel, names in ((sa._segmented_fwd_kernel, ("len_q", "len_seg", "len_a", "len_b")),
                          (sa._segmented_split_kernel, ("len_q", "len_seg", "len_a", "len_b", "blocks_per_split")),
                          (da._decode_split_kernel, ("len_kv", "n_blocks", "blocks_per_split")),
                          (da._merge_splits_kernel, ("n_splits", "n_rows"))):
        # A compiled JITFunction has .do_not_specialize; the interpreter's keeps the decorator's kwargs.
        listed = getattr(kernel, "do_not_specialize", None) or kernel.kwargs.get("do_not_specialize") or []
        marked = {kernel.arg_names[i] if isinstance(i, int) else i for i in listed}
        assert set(names) <= marked, f"{kernel.fn.__name__}: {set(names) - marked} specialised"


@pytest.mark.parametrize("len_q", [1, 3, 40])  # few-query path (rows 4, 12) and the prefill kernel (rows 160)
def test_fp16_within_twice_torchs_fp16_error(len_q):
    """fp16 inputs (the interpreter's tl.dot is right for fp16, not bf16): kernel vs float64 within
    2x the error of the same torch computation in fp16."""
    gen = torch.Generator().manual_seed(len_q)
    q = _randn(1, 8, len_q, 64, gen=gen)
    k, v = (_randn(1, 2, 50, 64, gen=gen) for _ in range(2))
    k_vis, v_vis = (_randn(1, 2, 70, 64, gen=gen) for _ in range(2))
    args = [q, k, v, k_vis, v_vis]
    ref64 = segmented_attention_ref(*args)[0]
    ref16 = segmented_attention_ref(*[a.half() for a in args])[0]
    out = segmented_attention(*[a.half().to(DEVICE) for a in args])
    assert out.dtype == torch.float16
    assert_within_rule(out.cpu(), ref16, ref64, f"fp16 Lq={len_q}", floor=1e-4)
