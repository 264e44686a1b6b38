"""Decode attention (flash-decoding): one new query token per sequence over a compacted KV cache.

Layouts:

* ``q_BHD``   [B, Hq, D] (or ``q_BH1D`` [B, Hq, 1, D]; the output keeps the query's shape).
* ``k_BHLD``  [B, Hkv, L, D], ``v_BHLD`` the same: every key is visible (the cache is already
              compacted to what the method keeps).
* ``kv_lens_B`` optional int [B]: sequence b only uses keys ``0 .. kv_lens_B[b] - 1`` (a cache
              preallocated longer than its content). Lengths are clamped to ``[0, L]`` inside the
              kernel (checking them on the host would cost a device sync per step): a length above
              ``L`` reads the whole cache and never past it; a length of 0 (or below) attends to
              nothing and gives a defined result: output zeros and lse ``-inf``.
* ``out`` like q, in q's dtype; ``lse_BH`` [B, Hq] float32, natural log.

One query row per head gives a tensor core nothing to do and a single program per head cannot fill
a GPU at 128K keys, so the work is split along the keys: program (split s, batch b, KV head h)
streams its share of the keys once for *all* the query heads of h's GQA group (the group is the M
dimension of ``tl.dot``, padded to 16) and writes a partial output plus its log-sum-exp; a second
small kernel merges the splits. Decode is bound by reading K/V, so each K/V byte is read once.
"""

from __future__ import annotations

import math

import torch

from ._softmax import online_softmax_update
from ._triton import (
    check_offsets,
    launch_first_fitting,
    require,
    sm_count,
    target,
    tile_shared_bytes,
    tl,
    triton,
)

LOG2E = 1.4426950408889634
MAX_SPLITS = 128  # the merge kernel holds every split of one head in registers


# Lengths and split counts change every step: specialising on them (a value of 1, multiples of 16)
# would recompile the kernel mid-run.
@triton.jit(do_not_specialize=["len_kv", "n_blocks", "blocks_per_split"])
def _decode_split_kernel(
    Q, K, V, KvLens, BlockIdx, OPart, LsePart,
    qk_scale,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_lb, stride_lh, stride_ls,
    n_kv_heads, group, len_kv, n_blocks, blocks_per_split,
    HAS_LENS: tl.constexpr, HAS_BLOCK_IDX: tl.constexpr,
    GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PREC: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // n_kv_heads).to(tl.int64)
    off_hk = (pid_bh % n_kv_heads).to(tl.int64)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = off_hk * group + offs_g  # the query heads that share KV head off_hk
    g_ok = offs_g < group
    q = tl.load(Q + off_b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                mask=g_ok[:, None], other=0.0)

    kv_len = len_kv
    if HAS_LENS:  # clamped: never read past the cache; <= 0 visits no block (lse -inf, zeros)
        kv_len = tl.minimum(tl.maximum(tl.load(KvLens + off_b).to(tl.int32), 0), len_kv)
    n_visit = n_blocks
    if not HAS_BLOCK_IDX:
        n_visit = tl.minimum(n_blocks, tl.cdiv(kv_len, BLOCK_N))  # skip blocks past this sequence
    lo = pid_s * blocks_per_split
    hi = tl.minimum(lo + blocks_per_split, n_visit)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    k_base = K + off_b * stride_kb + off_hk * stride_kh
    v_base = V + off_b * stride_vb + off_hk * stride_vh
    for t in range(lo, hi):
        if HAS_BLOCK_IDX:
            blk = tl.load(BlockIdx + t)  # visit only the listed key blocks (block-sparse decode)
        else:
            blk = t
        cols = blk * BLOCK_N + offs_n
        key_ok = cols < kv_len
        kT = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=key_ok[None, :], other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=key_ok[:, None], other=0.0)
        qk = tl.dot(q, kT, input_precision=DOT_PREC)
        # Masking every block is cheap here: decode is bound by reading K/V, not by math.
        qk = tl.where(key_ok[None, :], qk, float("-inf"))
        acc, l_i, m_i = online_softmax_update(acc, l_i, m_i, qk, v, qk_scale, DOT_PREC)

    # A split with no keys (past a short sequence) writes lse = -inf and zeros: zero weight in the merge.
    has_keys = l_i > 0
    l_safe = tl.where(has_keys, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_keys, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))  # natural log
    tl.store(OPart + off_b * stride_ob + heads[:, None] * stride_oh + pid_s * stride_os + offs_d[None, :] * stride_od,
             out, mask=g_ok[:, None])
    tl.store(LsePart + off_b * stride_lb + heads * stride_lh + pid_s * stride_ls, lse, mask=g_ok)


@triton.jit(do_not_specialize=["n_splits", "n_rows"])
def _merge_splits_kernel(
    OPart, LsePart, Out, Lse,
    stride_ob, stride_oh, stride_or, stride_os, stride_od,
    stride_lb, stride_lh, stride_lr, stride_ls,
    stride_outb, stride_outh, stride_outr, stride_outd,
    stride_lseb, stride_lseh, stride_lser,
    n_q_heads, n_rows, n_splits,
    SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, WRITE_LSE: tl.constexpr,
):
    """out = sum_s exp(lse_s - lse) * out_s with lse = log sum_s exp(lse_s), per (batch, query head,
    query row); ``n_rows`` query rows per head (1 for decode, a few for the segmented few-query path).

    A row whose splits all saw no key (every lse_s = -inf) gets zeros and lse -inf, never the NaN of
    -inf - -inf."""
    pid = tl.program_id(0)
    off_r = (pid % n_rows).to(tl.int64)
    off_h = ((pid // n_rows) % n_q_heads).to(tl.int64)
    off_b = (pid // (n_rows * n_q_heads)).to(tl.int64)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < n_splits
    lse_base = LsePart + off_b * stride_lb + off_h * stride_lh + off_r * stride_lr
    lse_s = tl.load(lse_base + offs_s * stride_ls, mask=s_ok, other=float("-inf"))
    o_s = tl.load(OPart + off_b * stride_ob + off_h * stride_oh + off_r * stride_or + offs_s[:, None] * stride_os
                  + offs_d[None, :] * stride_od, mask=s_ok[:, None], other=0.0)
    m = tl.max(lse_s, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse_s - m_safe)  # splits that saw no key have lse = -inf, hence weight 0
    total = tl.sum(w, 0)
    seen = total > 0
    out = tl.sum(o_s * w[:, None], 0) / tl.where(seen, total, 1.0)
    tl.store(Out + off_b * stride_outb + off_h * stride_outh + off_r * stride_outr + offs_d * stride_outd,
             out.to(Out.dtype.element_ty))
    if WRITE_LSE:
        lse = tl.where(seen, m_safe + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
        tl.store(Lse + off_b * stride_lseb + off_h * stride_lseh + off_r * stride_lser, lse)


def merge_splits(o_part: torch.Tensor, lse_part: torch.Tensor, out: torch.Tensor, lse: torch.Tensor | None) -> None:
    """Launch the merge: ``o_part`` [B, Hq, R, S, D] float32, ``lse_part`` [B, Hq, R, S] into ``out``
    [B, Hq, R, D] (any strides, its dtype) and, if given, ``lse`` [B, Hq, R] float32."""
    batch, n_q_heads, n_rows, splits, head_dim = o_part.shape
    _merge_splits_kernel[(batch * n_q_heads * n_rows,)](
        o_part, lse_part, out, lse if lse is not None else lse_part,
        *o_part.stride(), *lse_part.stride(), *out.stride(), *(lse.stride() if lse is not None else (0, 0, 0)),
        n_q_heads, n_rows, splits,
        SPLITS_PAD=triton.next_power_of_2(splits), HEAD_DIM=head_dim, WRITE_LSE=lse is not None,
        num_warps=4 if o_part.device.type == "cuda" else 1,
    )


def default_config(dtype: torch.dtype, head_dim: int, device_type: str) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages): 64-key blocks, 4 warps, 3 stages of K/V loads in flight to
    hide memory latency (2 for the wider fp32 / D=256 tiles)."""
    return configs(dtype, head_dim, device_type)[0]


def configs(dtype: torch.dtype, head_dim: int, device_type: str) -> list[tuple[int, int, int]]:
    """Candidate (BLOCK_N, num_warps, num_stages), best first; the launcher takes the first whose
    shared memory fits the device (``_triton.launch_first_fitting``)."""
    if device_type != "cuda":
        return [(16, 4, 1)]
    if dtype == torch.float32 or head_dim > 128:
        return [(64, 4, 2), (32, 4, 2), (32, 4, 1)]
    return [(64, 4, 3), (64, 4, 2), (32, 4, 2)]


def split_shared_bytes(rows_pad: int, block_n: int, head_dim: int, num_stages: int, elem_bytes: int) -> int:
    """Shared-memory estimate of one split program: the padded query rows and the K/V stages."""
    return tile_shared_bytes(rows_pad, block_n, head_dim, num_stages, elem_bytes)


def choose_splits(n_blocks: int, batch_kv_heads: int, device: torch.device) -> int:
    """Enough (split, batch, KV head) programs for ~4 waves over the SMs, but at least 2 blocks each."""
    target = 4 * sm_count(device)
    splits = triton.cdiv(target, max(batch_kv_heads, 1))
    return max(1, min(splits, triton.cdiv(n_blocks, 2), MAX_SPLITS))


def _decode(
    q_BHD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
    kv_lens_B: torch.Tensor | None, block_idx: torch.Tensor | None,
    sm_scale: float | None, num_splits: int | None,
    block_n: int | None, num_warps: int | None, num_stages: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared launcher. ``block_idx`` (int32 [n], ascending) restricts the visit to those key blocks of
    ``block_n`` keys each; it is how block-sparse decode skips what its pattern cannot see."""
    squeeze = q_BHD.dim() == 4
    if squeeze:
        if q_BHD.shape[2] != 1:
            raise ValueError(f"decode takes one query token, got q of shape {tuple(q_BHD.shape)}")
        q_BHD = q_BHD[:, :, 0]
    if q_BHD.dim() != 3 or k_BHLD.dim() != 4 or k_BHLD.shape != v_BHLD.shape:
        raise ValueError(f"expected q [B, Hq, D] and k/v [B, Hkv, L, D], got {tuple(q_BHD.shape)}, "
                         f"{tuple(k_BHLD.shape)}, {tuple(v_BHLD.shape)}")
    batch, n_q_heads, head_dim = q_BHD.shape
    _, n_kv_heads, len_kv, _ = k_BHLD.shape
    if k_BHLD.shape[0] != batch or k_BHLD.shape[3] != head_dim or n_q_heads % n_kv_heads:
        raise ValueError(f"q {tuple(q_BHD.shape)} does not match k/v {tuple(k_BHLD.shape)}")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
    if k_BHLD.dtype != q_BHD.dtype or v_BHLD.dtype != q_BHD.dtype:
        raise ValueError("q, k and v must share a dtype")
    if len_kv == 0:
        raise ValueError("decode needs at least one key")
    require(q_BHD)
    check_offsets(k_BHLD, v_BHLD)
    group = n_q_heads // n_kv_heads
    if kv_lens_B is not None:
        if kv_lens_B.shape != (batch,):
            raise ValueError(f"kv_lens_B must be [B={batch}], got {tuple(kv_lens_B.shape)}")
        if kv_lens_B.is_floating_point() or kv_lens_B.is_complex():
            raise ValueError(f"kv_lens_B must hold integers, got {kv_lens_B.dtype}")
        kv_lens_B = kv_lens_B.to(device=q_BHD.device, dtype=torch.int32)
    group_pad = max(16, triton.next_power_of_2(group))
    candidates = [dict(BLOCK_N=bn, num_warps=w, num_stages=st)
                  for bn, w, st in configs(q_BHD.dtype, head_dim, target(q_BHD.device))]
    if block_n is not None:  # a block list (block-sparse decode) fixes the key block; stages can still drop
        candidates = [c | {"BLOCK_N": block_n} for c in candidates]
    candidates = [c | {k: v for k, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v} for c in candidates]

    dev = q_BHD.device
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)

    def launch(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
        config = dict(config)
        bn = config["BLOCK_N"]
        n_blocks = block_idx.numel() if block_idx is not None else triton.cdiv(len_kv, bn)
        splits = num_splits or choose_splits(n_blocks, batch * n_kv_heads, dev)
        per_split = triton.cdiv(n_blocks, min(max(splits, 1), MAX_SPLITS))
        splits = triton.cdiv(n_blocks, per_split)  # no split left without blocks
        o_part = torch.empty((batch, n_q_heads, 1, splits, head_dim), device=dev, dtype=torch.float32)
        lse_part = torch.empty((batch, n_q_heads, 1, splits), device=dev, dtype=torch.float32)
        _decode_split_kernel[(splits, batch * n_kv_heads)](
            q_BHD, k_BHLD, v_BHLD,
            kv_lens_B if kv_lens_B is not None else o_part, block_idx if block_idx is not None else o_part,
            o_part, lse_part, scale * LOG2E,
            *q_BHD.stride(), *k_BHLD.stride(), *v_BHLD.stride(),
            o_part.stride(0), o_part.stride(1), o_part.stride(3), o_part.stride(4),
            lse_part.stride(0), lse_part.stride(1), lse_part.stride(3),
            n_kv_heads, group, len_kv, n_blocks, per_split,
            HAS_LENS=kv_lens_B is not None, HAS_BLOCK_IDX=block_idx is not None,
            GROUP_PAD=group_pad, HEAD_DIM=head_dim, DOT_PREC="ieee" if q_BHD.dtype == torch.float32 else "tf32",
            **config,
        )
        return o_part, lse_part

    o_part, lse_part = launch_first_fitting(
        launch, candidates,
        lambda c: split_shared_bytes(group_pad, c["BLOCK_N"], head_dim, c["num_stages"], q_BHD.element_size()),
        dev, "decode_attention")
    out = torch.empty_like(q_BHD)
    lse = torch.empty((batch, n_q_heads), device=dev, dtype=torch.float32)
    merge_splits(o_part, lse_part, out[:, :, None], lse[:, :, None])
    if squeeze:
        return out[:, :, None], lse[:, :, None]
    return out, lse


def decode_attention(
    q_BHD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
    kv_lens_B: torch.Tensor | None = None,
    *, sm_scale: float | None = None, num_splits: int | None = None,
    block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
) -> torch.Tensor:
    """One query token per sequence over all of k/v (up to ``kv_lens_B``). Returns out shaped like q."""
    return _decode(q_BHD, k_BHLD, v_BHLD, kv_lens_B, None, sm_scale, num_splits, block_n, num_warps, num_stages)[0]


def decode_attention_lse(
    q_BHD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
    kv_lens_B: torch.Tensor | None = None,
    *, sm_scale: float | None = None, num_splits: int | None = None,
    block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`decode_attention`, also returning the log-sum-exp ([B, Hq], or [B, Hq, 1] for 4-D q)."""
    return _decode(q_BHD, k_BHLD, v_BHLD, kv_lens_B, None, sm_scale, num_splits, block_n, num_warps, num_stages)


def merge_attention_states(out_BHSD: torch.Tensor, lse_BHS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge S partial attention results over disjoint key sets into one (plain torch).

    ``out_BHSD`` [..., S, D] are the partial outputs, ``lse_BHS`` [..., S] their natural-log
    log-sum-exps (-inf for an empty part). Returns (out [..., D] in out's dtype, lse [...]), computed
    in float32 at least (float64 inputs stay float64).
    """
    work = torch.promote_types(out_BHSD.dtype, torch.float32)
    lse = lse_BHS.to(work)
    total = torch.logsumexp(lse, dim=-1)
    weights = torch.exp(lse - total.nan_to_num(neginf=0.0)[..., None]).nan_to_num(0.0)
    out = (out_BHSD.to(work) * weights[..., None]).sum(dim=-2)
    return out.to(out_BHSD.dtype), total


def decode_attention_ref(
    q_BHD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
    kv_lens_B: torch.Tensor | None = None, *, sm_scale: float | None = None,
    key_mask_BL: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch reference in the inputs' dtype: returns (out like q, lse). ``key_mask_BL`` (bool)
    additionally hides keys, which is how the block-sparse decode reference uses it."""
    squeeze = q_BHD.dim() == 4
    q = q_BHD[:, :, 0] if squeeze else q_BHD
    batch, n_q_heads, head_dim = q.shape
    n_kv_heads, len_kv = k_BHLD.shape[1], k_BHLD.shape[2]
    group = n_q_heads // n_kv_heads
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    k = k_BHLD.repeat_interleave(group, dim=1)
    v = v_BHLD.repeat_interleave(group, dim=1)
    scores_BHL = torch.einsum("bhd,bhld->bhl", q, k) * scale
    keep_BL = torch.ones(batch, len_kv, dtype=torch.bool, device=q.device)
    if kv_lens_B is not None:
        keep_BL &= torch.arange(len_kv, device=q.device)[None, :] < kv_lens_B.to(q.device)[:, None]
    if key_mask_BL is not None:
        keep_BL &= key_mask_BL
    scores_BHL = scores_BHL.masked_fill(~keep_BL[:, None, :], float("-inf"))
    lse = torch.logsumexp(scores_BHL, dim=-1)
    out = torch.einsum("bhl,bhld->bhd", torch.softmax(scores_BHL, dim=-1), v)
    if squeeze:
        return out[:, :, None], lse[:, :, None]
    return out, lse
