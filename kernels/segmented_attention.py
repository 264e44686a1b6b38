"""Segmented attention forward: a segment's queries over a fully visible KV part plus the segment's own KV.

Layouts (suffixes name the dimensions):

* ``q_BHLD``       [B, Hq, Lq, D]  the segment's queries.
* ``k_seg_BHLD``   [B, Hkv, Ls, D] keys of the segment tokens themselves (Ls >= Lq, usually Ls == Lq).
                   Causal, bottom-right aligned: query i sees segment keys 0 .. i + (Ls - Lq).
* ``k_vis_a_BHLD`` [B, Hkv, La, D] visible set A (e.g. the carried tail), La >= 0, fully visible.
* ``k_vis_b_BHLD`` [B, Hkv, Lb, D] visible set B (e.g. the retrieved prefix), fully visible.
* ``head_uses_b_H`` bool [Hkv]: KV head h reads set B instead of set A (per-head choice, no concat).
* ``out_BHLD``     [B, Hq, Lq, D] in q's dtype; ``lse_BHL`` [B, Hq, Lq] float32, natural log of the
                   softmax denominator (over scaled scores), for merging with other partial results.

GQA: query head h reads KV head ``h // (Hq // Hkv)`` (HF ``repeat_kv`` order); K/V are never expanded.
Chunked prefill of full attention is the special case visible = all earlier KV, segment = the chunk.

Two paths behind the same entry points, chosen by query length:

* Few queries (decode steps, tiny chunks: ``Lq * group <= FEW_QUERY_ROWS``): flash-decoding. The
  GQA group's query rows of one KV head are packed into one tile (rows = group x Lq, padded to 16),
  so each K/V byte is read once per KV head, not once per query head, and no 128-row tile runs
  with 127 rows of padding. The keys [visible set; segment] are split across programs (enough for
  ~4 waves over the SMs); each writes a partial output and log-sum-exp, and a second small kernel
  merges the splits (``decode_attention.merge_splits``).
* Many queries (prefill): the kernel below.

The prefill kernel follows Triton's fused-attention tutorial: one program per (query block, batch*head),
online softmax in fp32 with exp2, ``tl.dot`` accumulating in fp32. Key blocks are visited in three
runs so that only the blocks that need a mask pay for it: the visible set (mask only on its ragged
last block), the segment blocks that every query of the block sees (no mask), then the few
diagonal blocks (causal + length mask).
"""

from __future__ import annotations

import math

import torch

from ._softmax import online_softmax_update
from ._triton import check_offsets, launch_first_fitting, require, target, tile_shared_bytes, tl, triton
from .decode_attention import MAX_SPLITS, choose_splits, merge_splits
from .decode_attention import configs as _split_configs

LOG2E = 1.4426950408889634
# Up to this many packed query rows (Lq x GQA group) per KV head the few-query (split-KV) path runs:
# 64 rows are one tile of the split kernel (acc 64 x D fp32 in 4 warps); beyond, the prefill
# kernel's 128-row tiles are no longer mostly padding.
FEW_QUERY_ROWS = 64


@triton.jit
def _attend(
    acc, l_i, m_i, q,
    k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    lo, hi, n_keys, q_pos, qk_scale,
    offs_n, offs_d,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Online-softmax update of (acc, l_i, m_i) with the key blocks starting in [lo, hi).

    ``MASKED`` blocks hide keys >= n_keys and keys after each row's causal limit ``q_pos``.
    """
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kT_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd
        if MASKED:
            kT = tl.load(kT_ptrs, mask=cols[None, :] < n_keys, other=0.0)
            v = tl.load(v_ptrs, mask=cols[:, None] < n_keys, other=0.0)
        else:
            kT = tl.load(kT_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, kT, input_precision=DOT_PREC)
        if MASKED:
            seen = (cols[None, :] < n_keys) & (cols[None, :] <= q_pos[:, None])
            qk = tl.where(seen, qk, float("-inf"))
        acc, l_i, m_i = online_softmax_update(acc, l_i, m_i, qk, v, qk_scale, DOT_PREC)
    return acc, l_i, m_i


@triton.jit
def _attend_visible(
    acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    n_keys, qk_scale, offs_m, offs_n, offs_d,
    BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """A fully visible key set: unmasked full blocks, then its ragged last block (if any) masked."""
    full_end = (n_keys // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                            0, full_end, n_keys, offs_m, qk_scale, offs_n, offs_d,
                            BLOCK_N, False, DOT_PREC)
    everything = offs_m * 0 + n_keys  # causal limit past the last key: only the length mask bites
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                            full_end, n_keys, n_keys, everything, qk_scale, offs_n, offs_d,
                            BLOCK_N, True, DOT_PREC)
    return acc, l_i, m_i


# Lengths change from segment to segment and step to step: specialising on them (1, multiples of
# 16) would recompile the kernel mid-run.
@triton.jit(do_not_specialize=["len_q", "len_seg", "len_a", "len_b"])
def _segmented_fwd_kernel(
    Q, KS, VS, KA, VA, KB, VB, UseB, Out, Lse,
    qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_ksb, stride_ksh, stride_ksn, stride_ksd,
    stride_vsb, stride_vsh, stride_vsn, stride_vsd,
    stride_kab, stride_kah, stride_kan, stride_kad,
    stride_vab, stride_vah, stride_van, stride_vad,
    stride_kbb, stride_kbh, stride_kbn, stride_kbd,
    stride_vbb, stride_vbh, stride_vbn, stride_vbd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh, stride_lm,
    n_q_heads, group, len_q, len_seg, len_a, len_b,
    HAS_B: tl.constexpr, WRITE_LSE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # Last query blocks see the most keys: start them first so the tail of the grid is short work.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // n_q_heads).to(tl.int64)
    off_h = (pid_bh % n_q_heads).to(tl.int64)
    off_hk = off_h // group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=offs_m[:, None] < len_q, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # Visible part. Each KV head reads exactly one of the two sets; the other gets length 0 so its
    # loops do not run and none of its blocks are loaded. (Visiting B before A changes nothing:
    # the online softmax is order-free.)
    n_a = len_a
    if HAS_B:
        use_b = tl.load(UseB + off_hk) != 0
        n_a = tl.where(use_b, 0, len_a)
        acc, l_i, m_i = _attend_visible(
            acc, l_i, m_i, q,
            KB + off_b * stride_kbb + off_hk * stride_kbh, VB + off_b * stride_vbb + off_hk * stride_vbh,
            stride_kbn, stride_kbd, stride_vbn, stride_vbd,
            tl.where(use_b, len_b, 0), qk_scale, offs_m, offs_n, offs_d, BLOCK_N, DOT_PREC)
    acc, l_i, m_i = _attend_visible(
        acc, l_i, m_i, q,
        KA + off_b * stride_kab + off_hk * stride_kah, VA + off_b * stride_vab + off_hk * stride_vah,
        stride_kan, stride_kad, stride_van, stride_vad,
        n_a, qk_scale, offs_m, offs_n, offs_d, BLOCK_N, DOT_PREC)

    # Segment part, bottom-right causal: row r sees segment keys <= r + (len_seg - len_q).
    shift = len_seg - len_q
    q_pos = offs_m + shift
    first_row_pos = pid_m * BLOCK_M + shift
    seen_by_all_end = ((first_row_pos + 1) // BLOCK_N) * BLOCK_N  # blocks every row of this block sees
    diag_end = tl.minimum(first_row_pos + BLOCK_M, len_seg)       # past the last row's last key
    ks_base = KS + off_b * stride_ksb + off_hk * stride_ksh
    vs_base = VS + off_b * stride_vsb + off_hk * stride_vsh
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, ks_base, vs_base, stride_ksn, stride_ksd, stride_vsn, stride_vsd,
                            0, seen_by_all_end, len_seg, q_pos, qk_scale, offs_n, offs_d,
                            BLOCK_N, False, DOT_PREC)
    acc, l_i, m_i = _attend(acc, l_i, m_i, q, ks_base, vs_base, stride_ksn, stride_ksd, stride_vsn, stride_vsd,
                            seen_by_all_end, diag_end, len_seg, q_pos, qk_scale, offs_n, offs_d,
                            BLOCK_N, True, DOT_PREC)

    row_ok = offs_m < len_q
    out = acc / l_i[:, None]  # every real row sees at least its own key, so l_i > 0
    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    if WRITE_LSE:
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # log2 units back to natural log (ln 2)
        tl.store(Lse + off_b * stride_lb + off_h * stride_lh + offs_m * stride_lm, lse, mask=row_ok)


@triton.jit(do_not_specialize=["len_q", "len_seg", "len_a", "len_b", "blocks_per_split"])
def _segmented_split_kernel(
    Q, KS, VS, KA, VA, KB, VB, UseB, OPart, LsePart,
    qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_ksb, stride_ksh, stride_ksn, stride_ksd,
    stride_vsb, stride_vsh, stride_vsn, stride_vsd,
    stride_kab, stride_kah, stride_kan, stride_kad,
    stride_vab, stride_vah, stride_van, stride_vad,
    stride_kbb, stride_kbh, stride_kbn, stride_kbd,
    stride_vbb, stride_vbh, stride_vbn, stride_vbd,
    stride_ob, stride_oh, stride_om, stride_os, stride_od,
    stride_lb, stride_lh, stride_lm, stride_ls,
    n_kv_heads, group, len_q, len_seg, len_a, len_b, blocks_per_split,
    HAS_B: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Few-query path: program (split s, batch b, KV head h) attends the packed rows (query head
    h * group + r // Lq, query r % Lq) to split s's share of the key blocks [visible; segment]."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // n_kv_heads).to(tl.int64)
    off_hk = (pid_bh % n_kv_heads).to(tl.int64)

    offs_r = tl.arange(0, ROWS)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_r < group * len_q
    heads = off_hk * group + offs_r // len_q
    q_row = offs_r % len_q
    q = tl.load(Q + off_b * stride_qb + heads[:, None] * stride_qh + q_row[:, None] * stride_qm
                + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)

    # This head's visible set is A or B (the other gets length 0); its blocks come first, then the
    # segment's. Split s takes blocks [lo, hi) of that sequence.
    n_a = len_a
    n_b = len_a * 0
    if HAS_B:
        use_b = tl.load(UseB + off_hk) != 0
        n_a = tl.where(use_b, 0, len_a)
        n_b = tl.where(use_b, len_b, 0)
    nb_a = tl.cdiv(n_a, BLOCK_N)
    nb_vis = nb_a + tl.cdiv(n_b, BLOCK_N)
    lo = pid_s * blocks_per_split
    hi = tl.minimum(lo + blocks_per_split, nb_vis + tl.cdiv(len_seg, BLOCK_N))

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    everything = offs_r * 0 + len_a + len_b  # no causal limit on visible keys: only the length mask
    acc, l_i, m_i = _attend(acc, l_i, m_i, q,
                            KA + off_b * stride_kab + off_hk * stride_kah, VA + off_b * stride_vab + off_hk * stride_vah,
                            stride_kan, stride_kad, stride_van, stride_vad,
                            lo * BLOCK_N, tl.minimum(hi, nb_a) * BLOCK_N, n_a, everything, qk_scale, offs_n, offs_d,
                            BLOCK_N, True, DOT_PREC)
    if HAS_B:
        acc, l_i, m_i = _attend(acc, l_i, m_i, q,
                                KB + off_b * stride_kbb + off_hk * stride_kbh,
                                VB + off_b * stride_vbb + off_hk * stride_vbh,
                                stride_kbn, stride_kbd, stride_vbn, stride_vbd,
                                tl.maximum(lo - nb_a, 0) * BLOCK_N, (tl.minimum(hi, nb_vis) - nb_a) * BLOCK_N,
                                n_b, everything, qk_scale, offs_n, offs_d, BLOCK_N, True, DOT_PREC)
    # Segment, bottom-right causal: row r sees segment keys <= r % Lq + (len_seg - len_q).
    acc, l_i, m_i = _attend(acc, l_i, m_i, q,
                            KS + off_b * stride_ksb + off_hk * stride_ksh, VS + off_b * stride_vsb + off_hk * stride_vsh,
                            stride_ksn, stride_ksd, stride_vsn, stride_vsd,
                            tl.maximum(lo - nb_vis, 0) * BLOCK_N, (hi - nb_vis) * BLOCK_N, len_seg,
                            q_row + (len_seg - len_q), qk_scale, offs_n, offs_d, BLOCK_N, True, DOT_PREC)

    # A split holding no key a row may see writes lse = -inf and zeros: zero weight in the merge.
    has_keys = l_i > 0
    l_safe = tl.where(has_keys, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_keys, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    o_row = OPart + off_b * stride_ob + heads * stride_oh + q_row * stride_om + pid_s * stride_os
    tl.store(o_row[:, None] + offs_d[None, :] * stride_od, out, mask=row_ok[:, None])
    tl.store(LsePart + off_b * stride_lb + heads * stride_lh + q_row * stride_lm + pid_s * stride_ls, lse, mask=row_ok)


def _check_kv(name: str, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor) -> None:
    if k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"{name}: k and v must both be [B, Hkv, L, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"{name}: batch/head_dim {tuple(k.shape)} do not match q {tuple(q.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"{name}: query heads {q.shape[1]} are not a multiple of KV heads {k.shape[1]}")
    if k.dtype != q.dtype or v.dtype != q.dtype or k.device != q.device or v.device != q.device:
        raise ValueError(f"{name}: k/v must share q's dtype and device")


def default_config(dtype: torch.dtype, head_dim: int, device_type: str) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for inputs of this dtype/head_dim on this device type:
    the first of :func:`configs`."""
    return configs(dtype, head_dim, device_type)[0]


def configs(dtype: torch.dtype, head_dim: int, device_type: str) -> list[tuple[int, int, int, int]]:
    """Candidate (BLOCK_M, BLOCK_N, num_warps, num_stages) of the prefill kernel, best first; the
    launcher takes the first whose shared memory fits the device (``_triton.launch_first_fitting``).

    bf16/fp16: 128x64 tiles with 3 stages keep Q plus three K/V stages (128 KiB at D=128) in an
    H100's shared memory, and 8 warps hold the 128xD fp32 accumulator without spilling; GPUs with
    ~100 KB per block (consumer Ampere/Ada) fall to 2 stages or 64-row tiles. D=256 halves the tiles.
    fp32 (IEEE dots on CUDA cores, for correctness checks, not speed) uses small tiles to limit
    register spills. Each first choice is checked by ``python -m segbench.kernels.compile_check``.
    The CPU interpreter is fastest with small tiles.
    """
    if device_type != "cuda":
        return [(16, 16, 4, 1)]
    if dtype == torch.float32:
        return [(32, 32, 4, 2), (32, 32, 4, 1)]
    if head_dim > 128:
        return [(64, 32, 8, 2), (32, 32, 4, 2), (32, 16, 4, 1)]
    return [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)]


def _segmented(
    q_BHLD: torch.Tensor, k_seg_BHLD: torch.Tensor, v_seg_BHLD: torch.Tensor,
    k_vis_a_BHLD: torch.Tensor | None, v_vis_a_BHLD: torch.Tensor | None,
    k_vis_b_BHLD: torch.Tensor | None, v_vis_b_BHLD: torch.Tensor | None,
    head_uses_b_H: torch.Tensor | None,
    sm_scale: float | None, write_lse: bool,
    block_m: int | None, block_n: int | None, num_warps: int | None, num_stages: int | None,
    path: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shared launcher; ``path`` ("auto", "few", "prefill") forces a path for tests."""
    if q_BHLD.dim() != 4:
        raise ValueError(f"q must be [B, Hq, Lq, D], got {tuple(q_BHLD.shape)}")
    batch, n_q_heads, len_q, head_dim = q_BHLD.shape
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
    _check_kv("segment", k_seg_BHLD, v_seg_BHLD, q_BHLD)
    n_kv_heads, len_seg = k_seg_BHLD.shape[1], k_seg_BHLD.shape[2]
    if len_seg < len_q:
        raise ValueError(f"segment keys ({len_seg}) must cover the {len_q} queries")
    if (k_vis_a_BHLD is None) != (v_vis_a_BHLD is None) or (k_vis_b_BHLD is None) != (v_vis_b_BHLD is None):
        raise ValueError("pass visible k and v together")
    has_b = k_vis_b_BHLD is not None
    if has_b != (head_uses_b_H is not None):
        raise ValueError("visible set B and head_uses_b_H go together")
    for name, k, v in (("visible A", k_vis_a_BHLD, v_vis_a_BHLD), ("visible B", k_vis_b_BHLD, v_vis_b_BHLD)):
        if k is not None:
            _check_kv(name, k, v, q_BHLD)
            if k.shape[1] != n_kv_heads:
                raise ValueError(f"{name}: {k.shape[1]} KV heads, segment has {n_kv_heads}")
    use_b = None
    if has_b:
        if head_uses_b_H.shape != (n_kv_heads,):
            raise ValueError(f"head_uses_b_H must be [Hkv={n_kv_heads}], got {tuple(head_uses_b_H.shape)}")
        use_b = head_uses_b_H.to(device=q_BHLD.device, dtype=torch.int8)
    require(q_BHLD)
    check_offsets(q_BHLD, k_seg_BHLD, v_seg_BHLD, *(t for t in (k_vis_a_BHLD, v_vis_a_BHLD, k_vis_b_BHLD, v_vis_b_BHLD)
                                                   if t is not None))

    out = torch.empty_like(q_BHLD)
    lse = torch.empty((batch, n_q_heads, len_q), device=q_BHLD.device, dtype=torch.float32) if write_lse else None
    if len_q == 0 or batch == 0:
        return out, lse
    # Absent sets are passed as a zero-length view of the segment so the kernel signature stays fixed.
    empty = k_seg_BHLD[:, :, :0]
    ka, va = (k_vis_a_BHLD, v_vis_a_BHLD) if k_vis_a_BHLD is not None else (empty, empty)
    kb, vb = (k_vis_b_BHLD, v_vis_b_BHLD) if has_b else (empty, empty)
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    group = n_q_heads // n_kv_heads
    few = len_q * group <= FEW_QUERY_ROWS if path == "auto" else path == "few"
    if few:
        _segmented_few(q_BHLD, k_seg_BHLD, v_seg_BHLD, ka, va, kb, vb, use_b, has_b, out, lse, scale,
                       block_n, num_warps, num_stages)
        return out, lse

    lse_arg = lse if lse is not None else out  # never written when WRITE_LSE is False
    lse_strides = lse.stride() if lse is not None else (0, 0, 0)
    candidates = [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
                  for bm, bn, w, st in configs(q_BHLD.dtype, head_dim, target(q_BHLD.device))]
    overrides = {k: v for k, v in (("BLOCK_M", block_m), ("BLOCK_N", block_n), ("num_warps", num_warps),
                                   ("num_stages", num_stages)) if v}
    candidates = [c | overrides for c in candidates]

    def launch(config: dict) -> None:
        grid = (triton.cdiv(len_q, config["BLOCK_M"]), batch * n_q_heads)
        _segmented_fwd_kernel[grid](
            q_BHLD, k_seg_BHLD, v_seg_BHLD, ka, va, kb, vb, use_b if use_b is not None else out, out, lse_arg,
            scale * LOG2E,
            *q_BHLD.stride(), *k_seg_BHLD.stride(), *v_seg_BHLD.stride(),
            *ka.stride(), *va.stride(), *kb.stride(), *vb.stride(),
            *out.stride(), *lse_strides,
            n_q_heads, group, len_q, len_seg, ka.shape[2], kb.shape[2],
            HAS_B=has_b, WRITE_LSE=write_lse, HEAD_DIM=head_dim,
            DOT_PREC="ieee" if q_BHLD.dtype == torch.float32 else "tf32",
            **config,
        )

    launch_first_fitting(
        launch, candidates,
        lambda c: tile_shared_bytes(c["BLOCK_M"], c["BLOCK_N"], head_dim, c["num_stages"], q_BHLD.element_size()),
        q_BHLD.device, "segmented_attention")
    return out, lse


def _segmented_few(
    q_BHLD: torch.Tensor, k_seg: torch.Tensor, v_seg: torch.Tensor,
    ka: torch.Tensor, va: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor,
    use_b: torch.Tensor | None, has_b: bool, out: torch.Tensor, lse: torch.Tensor | None, scale: float,
    block_n: int | None, num_warps: int | None, num_stages: int | None,
) -> None:
    """The few-query path (see the module doc): split-KV over [visible; segment], then the merge."""
    batch, n_q_heads, len_q, head_dim = q_BHLD.shape
    n_kv_heads, len_seg = k_seg.shape[1], k_seg.shape[2]
    group = n_q_heads // n_kv_heads
    rows = max(16, triton.next_power_of_2(len_q * group))
    len_a, len_b = ka.shape[2], kb.shape[2]
    dev = q_BHLD.device
    candidates = [dict(BLOCK_N=bn, num_warps=w, num_stages=st) for bn, w, st in _split_configs(q_BHLD.dtype, head_dim, target(dev))]
    overrides = {k: v for k, v in (("BLOCK_N", block_n), ("num_warps", num_warps), ("num_stages", num_stages)) if v}
    candidates = [c | overrides for c in candidates]

    def launch(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
        bn = config["BLOCK_N"]
        n_blocks = triton.cdiv(max(len_a, len_b), bn) + triton.cdiv(len_seg, bn)  # the longest head's
        per_split = triton.cdiv(n_blocks, min(choose_splits(n_blocks, batch * n_kv_heads, dev), MAX_SPLITS))
        splits = triton.cdiv(n_blocks, per_split)
        o_part = torch.empty((batch, n_q_heads, len_q, splits, head_dim), device=dev, dtype=torch.float32)
        lse_part = torch.empty((batch, n_q_heads, len_q, splits), device=dev, dtype=torch.float32)
        _segmented_split_kernel[(splits, batch * n_kv_heads)](
            q_BHLD, k_seg, v_seg, ka, va, kb, vb, use_b if use_b is not None else o_part, o_part, lse_part,
            scale * LOG2E,
            *q_BHLD.stride(), *k_seg.stride(), *v_seg.stride(), *ka.stride(), *va.stride(), *kb.stride(), *vb.stride(),
            *o_part.stride(), *lse_part.stride(),
            n_kv_heads, group, len_q, len_seg, len_a, len_b, per_split,
            HAS_B=has_b, ROWS=rows, HEAD_DIM=head_dim, DOT_PREC="ieee" if q_BHLD.dtype == torch.float32 else "tf32",
            **config,
        )
        return o_part, lse_part

    o_part, lse_part = launch_first_fitting(
        launch, candidates,
        lambda c: tile_shared_bytes(rows, c["BLOCK_N"], head_dim, c["num_stages"], q_BHLD.element_size()),
        dev, "segmented_attention (few-query path)")
    merge_splits(o_part, lse_part, out, lse)


def segmented_attention(
    q_BHLD: torch.Tensor, k_seg_BHLD: torch.Tensor, v_seg_BHLD: torch.Tensor,
    k_vis_a_BHLD: torch.Tensor | None = None, v_vis_a_BHLD: torch.Tensor | None = None,
    k_vis_b_BHLD: torch.Tensor | None = None, v_vis_b_BHLD: torch.Tensor | None = None,
    head_uses_b_H: torch.Tensor | None = None,
    *, sm_scale: float | None = None,
    block_m: int | None = None, block_n: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> torch.Tensor:
    """Attention of the segment's queries over visible KV (set A, or B for heads in ``head_uses_b_H``)
    followed by the segment's own causal KV. Returns ``out_BHLD`` in q's dtype; see the module doc."""
    out, _ = _segmented(q_BHLD, k_seg_BHLD, v_seg_BHLD, k_vis_a_BHLD, v_vis_a_BHLD, k_vis_b_BHLD, v_vis_b_BHLD,
                        head_uses_b_H, sm_scale, False, block_m, block_n, num_warps, num_stages)
    return out


def segmented_attention_lse(
    q_BHLD: torch.Tensor, k_seg_BHLD: torch.Tensor, v_seg_BHLD: torch.Tensor,
    k_vis_a_BHLD: torch.Tensor | None = None, v_vis_a_BHLD: torch.Tensor | None = None,
    k_vis_b_BHLD: torch.Tensor | None = None, v_vis_b_BHLD: torch.Tensor | None = None,
    head_uses_b_H: torch.Tensor | None = None,
    *, sm_scale: float | None = None,
    block_m: int | None = None, block_n: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`segmented_attention`, also returning ``lse_BHL`` (float32, natural log)."""
    out, lse = _segmented(q_BHLD, k_seg_BHLD, v_seg_BHLD, k_vis_a_BHLD, v_vis_a_BHLD, k_vis_b_BHLD, v_vis_b_BHLD,
                          head_uses_b_H, sm_scale, True, block_m, block_n, num_warps, num_stages)
    assert lse is not None
    return out, lse


def segmented_attention_ref(
    q_BHLD: torch.Tensor, k_seg_BHLD: torch.Tensor, v_seg_BHLD: torch.Tensor,
    k_vis_a_BHLD: torch.Tensor | None = None, v_vis_a_BHLD: torch.Tensor | None = None,
    k_vis_b_BHLD: torch.Tensor | None = None, v_vis_b_BHLD: torch.Tensor | None = None,
    head_uses_b_H: torch.Tensor | None = None,
    *, sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch reference, computed in the inputs' dtype: returns (out_BHLD, lse_BHL).

    Materialises every score, so it is for tests and small shapes only.
    """
    batch, n_q_heads, len_q, head_dim = q_BHLD.shape
    n_kv_heads, len_seg = k_seg_BHLD.shape[1], k_seg_BHLD.shape[2]
    group = n_q_heads // n_kv_heads
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    rows = torch.arange(len_q, device=q_BHLD.device)[:, None] + (len_seg - len_q)
    seg_visible_LS = torch.arange(len_seg, device=q_BHLD.device)[None, :] <= rows
    outs, lses = [], []
    for h in range(n_kv_heads):
        use_b = head_uses_b_H is not None and bool(head_uses_b_H[h])
        k_vis, v_vis = (k_vis_b_BHLD, v_vis_b_BHLD) if use_b else (k_vis_a_BHLD, v_vis_a_BHLD)
        k_BLD, v_BLD = k_seg_BHLD[:, h], v_seg_BHLD[:, h]
        visible_LS = seg_visible_LS
        if k_vis is not None:
            k_BLD = torch.cat([k_vis[:, h], k_BLD], dim=1)
            v_BLD = torch.cat([v_vis[:, h], v_BLD], dim=1)
            visible_LS = torch.cat([seg_visible_LS.new_ones(len_q, k_vis.shape[2]), seg_visible_LS], dim=1)
        q_BGLD = q_BHLD[:, h * group:(h + 1) * group]
        scores = (q_BGLD @ k_BLD[:, None].transpose(-1, -2)) * scale
        scores = scores.masked_fill(~visible_LS, float("-inf"))
        lses.append(torch.logsumexp(scores, dim=-1))
        outs.append(torch.softmax(scores, dim=-1) @ v_BLD[:, None])
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)
