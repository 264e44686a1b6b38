"""LongGen-style block-sparse causal attention: prefill kernel and decode over the same pattern.

The sequence is cut into blocks of ``block_size`` tokens. Query block i attends to key block j
(j <= i) when any of these holds (see :func:`block_mask`, shared by kernels and references):

* attention sink: ``j < sink_blocks``;
* local window:   ``i - j < local_blocks`` (the diagonal block, causal inside, is always included:
  ``local_blocks`` must be >= 1 so every token sees itself);
* vertical stride: ``stride > 0 and j % stride == stride - 1`` (the same as ``(j + 1) % stride == 0``:
  the last block of every group of ``stride`` blocks).

The pattern is the same for every head (no per-head shift).

Layouts: ``q_BHLD`` [B, Hq, L, D], ``k_BHLD``/``v_BHLD`` [B, Hkv, L, D] (GQA: query head h reads
KV head ``h // (Hq // Hkv)``), out [B, Hq, L, D] in q's dtype, lse [B, Hq, L] float32 (natural log).
Prefill is self-attention: queries and keys are the same L positions.

The pattern's block and the kernel's tile are decoupled: the tile is ``min(block_size, 64)`` on a
GPU (128 for blocks >= 128 at D <= 128; never above 64 at D = 256, where a 128-wide tile needs more
than an H100's 227 KB of shared memory), so any power-of-two ``block_size`` >= 16 runs, a large
block as several tiles. Tile configs are pruned by the device's shared memory and a launch that
still runs out of resources falls back to the next smaller config, never an OutOfResources.

Prefill: one program per (query tile, batch * head) walks a precomputed, ascending list of the key
tiles its pattern row keeps (every tile of a kept block, and in the diagonal block the tiles up to
its own), so tiles outside the pattern are never loaded. Every listed tile but the last lies
entirely in the past and needs no mask; the last is the diagonal tile.

Decode (:func:`block_sparse_decode`): the newest token (position L - 1 of a cache holding L
tokens) attends to the key blocks of the last pattern row. It runs the flash-decoding kernel of
``decode_attention`` over that block list, reading the full cache but only the listed blocks. A
method that instead compacts its cache to exactly those blocks can call ``decode_attention`` on the
compacted cache: the result is the same.
"""

from __future__ import annotations

import functools
import math

import torch

from ._softmax import online_softmax_update
from ._triton import check_offsets, launch_first_fitting, require, target, tile_shared_bytes, tl, triton
from .decode_attention import _decode, decode_attention_ref

LOG2E = 1.4426950408889634


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def block_mask(n_q_blocks: int, n_k_blocks: int, sink_blocks: int, local_blocks: int, stride: int) -> torch.Tensor:
    """bool [n_q_blocks, n_k_blocks]: may query block i attend to key block j.

    The query blocks are the last ``n_q_blocks`` of the ``n_k_blocks`` (bottom-right aligned), so
    ``block_mask(n, n, ...)`` is the prefill pattern and ``block_mask(1, n, ...)[0]`` the decode row.
    """
    if n_k_blocks < n_q_blocks or n_q_blocks < 0:
        raise ValueError(f"need 0 <= n_q_blocks <= n_k_blocks, got {n_q_blocks}, {n_k_blocks}")
    if local_blocks < 1 or sink_blocks < 0 or stride < 0:
        raise ValueError("need local_blocks >= 1 (the diagonal block), sink_blocks >= 0 and stride >= 0")
    i = torch.arange(n_q_blocks)[:, None] + (n_k_blocks - n_q_blocks)
    j = torch.arange(n_k_blocks)[None, :]
    keep = (j < sink_blocks) | (i - j < local_blocks)
    if stride > 0:
        keep |= j % stride == stride - 1
    return keep & (j <= i)


def token_mask(len_q: int, len_k: int, block_size: int, sink_blocks: int, local_blocks: int, stride: int,
               device: torch.device | str | None = None) -> torch.Tensor:
    """bool [len_q, len_k]: the pattern at token level (the last len_q of len_k positions as queries),
    causal inside blocks. For references and a torch fallback with an explicit mask; O(len_q * len_k)."""
    n_blocks = _cdiv(len_k, block_size)
    q_pos = torch.arange(len_q, device=device) + (len_k - len_q)
    k_pos = torch.arange(len_k, device=device)
    blocks = block_mask(n_blocks, n_blocks, sink_blocks, local_blocks, stride).to(device)
    return blocks[q_pos // block_size][:, k_pos // block_size] & (k_pos[None, :] <= q_pos[:, None])


def attended_pairs(seq_len: int, block_size: int, sink_blocks: int, local_blocks: int, stride: int) -> int:
    """Query-key pairs the prefill pattern attends to (for FLOP counts), without a token-level mask."""
    n_blocks = _cdiv(seq_len, block_size)
    sizes = torch.full((n_blocks,), block_size, dtype=torch.float64)
    sizes[-1] = seq_len - (n_blocks - 1) * block_size
    strictly_past = block_mask(n_blocks, n_blocks, sink_blocks, local_blocks, stride).tril(-1).double()
    off_diagonal = sizes @ strictly_past @ sizes
    diagonal = (sizes * (sizes + 1) / 2).sum()
    return int(off_diagonal + diagonal)


def tile_mask(n_tiles: int, tiles_per_block: int, sink_blocks: int, local_blocks: int, stride: int) -> torch.Tensor:
    """bool [n_tiles, n_tiles]: may query tile i attend to key tile j (pattern blocks of
    ``tiles_per_block`` tiles each; causal at tile level, so the diagonal tile is each row's last)."""
    n_blocks = _cdiv(n_tiles, tiles_per_block)
    blocks = block_mask(n_blocks, n_blocks, sink_blocks, local_blocks, stride)
    t = torch.arange(n_tiles)
    return blocks[t // tiles_per_block][:, t // tiles_per_block] & (t[None, :] <= t[:, None])


@functools.lru_cache(maxsize=32)
def _active_blocks(n_tiles: int, tiles_per_block: int, sink_blocks: int, local_blocks: int, stride: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query tile, the ascending list of key tiles to visit, padded to the longest row.

    Returns (idx int32 [n_tiles, max_active], count int32 [n_tiles]) on ``device``. The diagonal
    tile is always kept and is the largest index, so it is each row's last entry.
    """
    keep = tile_mask(n_tiles, tiles_per_block, sink_blocks, local_blocks, stride)
    count = keep.sum(dim=1)
    # Stable sort of "not kept" puts the kept tile indices first, still in ascending order.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, : int(count.max())]
    return order.to(device=device, dtype=torch.int32), count.to(device=device, dtype=torch.int32)


@functools.lru_cache(maxsize=32)
def _decode_blocks(n_tiles: int, tiles_per_block: int, sink_blocks: int, local_blocks: int, stride: int,
                   device: torch.device) -> torch.Tensor:
    """int32 ascending key tiles the newest token of an n_tiles-tile cache attends to."""
    row = block_mask(1, _cdiv(n_tiles, tiles_per_block), sink_blocks, local_blocks, stride)[0]
    tiles = torch.arange(n_tiles)
    return tiles[row[tiles // tiles_per_block]].to(device=device, dtype=torch.int32)


@triton.jit(do_not_specialize=["seq_len"])
def _block_sparse_fwd_kernel(
    Q, K, V, Out, Lse, KvIdx, KvCount,
    qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh, stride_lm,
    stride_idx,
    n_q_heads, group, seq_len,
    WRITE_LSE: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # Later query blocks keep more strided blocks: schedule them first.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // n_q_heads).to(tl.int64)
    off_h = (pid_bh % n_q_heads).to(tl.int64)
    off_hk = off_h // group

    offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=offs_m[:, None] < seq_len, other=0.0)

    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, HEAD_DIM], tl.float32)
    k_base = K + off_b * stride_kb + off_hk * stride_kh
    v_base = V + off_b * stride_vb + off_hk * stride_vh

    # Blocks strictly before the diagonal: whole blocks in every query's past, no mask at all.
    n_active = tl.load(KvCount + pid_m)
    idx_row = KvIdx + pid_m * stride_idx
    for t in range(0, n_active - 1):
        cols = tl.load(idx_row + t) * BLOCK + offs_n
        kT = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd)
        qk = tl.dot(q, kT, input_precision=DOT_PREC)
        acc, l_i, m_i = online_softmax_update(acc, l_i, m_i, qk, v, qk_scale, DOT_PREC)

    # The diagonal block: causal inside, and possibly the ragged end of the sequence.
    cols = pid_m * BLOCK + offs_n
    key_ok = cols < seq_len
    kT = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd, mask=key_ok[None, :], other=0.0)
    v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=key_ok[:, None], other=0.0)
    qk = tl.dot(q, kT, input_precision=DOT_PREC)
    qk = tl.where(key_ok[None, :] & (cols[None, :] <= offs_m[:, None]), qk, float("-inf"))
    acc, l_i, m_i = online_softmax_update(acc, l_i, m_i, qk, v, qk_scale, DOT_PREC)

    row_ok = offs_m < seq_len
    out = acc / l_i[:, None]  # each row sees at least itself
    tl.store(Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    if WRITE_LSE:
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # log2 units back to natural log (ln 2)
        tl.store(Lse + off_b * stride_lb + off_h * stride_lh + offs_m * stride_lm, lse, mask=row_ok)


def default_config(dtype: torch.dtype, head_dim: int, block_size: int, device_type: str) -> tuple[int, int]:
    """(num_warps, num_stages) of the first choice of :func:`configs` (its tile: :func:`tile_size`)."""
    first = configs(dtype, head_dim, block_size, device_type)[0]
    return first["num_warps"], first["num_stages"]


def tile_size(dtype: torch.dtype, head_dim: int, block_size: int, device_type: str) -> int:
    """The kernel's square tile for a pattern of ``block_size`` blocks (a divisor of the block)."""
    return configs(dtype, head_dim, block_size, device_type)[0]["BLOCK"]


def configs(dtype: torch.dtype, head_dim: int, block_size: int, device_type: str) -> list[dict]:
    """Candidate tile configs (BLOCK, num_warps, num_stages), best first, each tile dividing the block.

    bf16/fp16 at D <= 128: 64x64 tiles in one warpgroup with 3 K/V stages; blocks >= 128 take
    128x128 tiles with 8 warps and 2 stages (160 KB at D=128). D = 256 keeps 64 (8 warps, 2 stages:
    160 KB; a 128 tile would need 384 KB). fp32 (IEEE dots, correctness only): 8 warps, no
    pipelining, to limit spills (see compile_check). The interpreter is fastest with 16x16 tiles.
    """
    def tiles(*options: tuple[int, int, int]) -> list[dict]:
        out = []
        for tile, warps, stages in options:
            tile = min(tile, block_size)
            # Small tiles: one warpgroup is enough, except at D=256 where 4 warps spill the accumulator.
            cfg = dict(BLOCK=tile, num_warps=warps if tile >= 64 or head_dim > 128 else 4, num_stages=stages)
            if cfg not in out:
                out.append(cfg)
        return out

    if device_type != "cuda":
        return tiles((16, 4, 1))
    if dtype == torch.float32:
        return tiles((64, 8, 1), (32, 4, 1))
    if head_dim > 128:
        return tiles((64, 8, 2), (32, 8, 2), (16, 8, 1))
    if block_size >= 128:
        return tiles((128, 8, 2), (64, 4, 3), (64, 4, 2), (32, 4, 2))
    return tiles((64, 4, 3), (64, 4, 2), (32, 4, 2), (16, 4, 1))


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"expected q [B, Hq, L, D], k/v [B, Hkv, L, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] or q.shape[1] % k.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} does not match k/v {tuple(k.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError("q, k and v must share a dtype")
    head_dim = q.shape[3]
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")


def _block_sparse(
    q_BHLD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
    sink_blocks: int, local_blocks: int, stride: int, block_size: int,
    sm_scale: float | None, write_lse: bool, num_warps: int | None, num_stages: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    _check(q_BHLD, k_BHLD, v_BHLD, block_size)
    batch, n_q_heads, seq_len, head_dim = q_BHLD.shape
    if k_BHLD.shape[2] != seq_len:
        raise ValueError(f"block-sparse prefill is self-attention: {seq_len} queries, {k_BHLD.shape[2]} keys")
    block_mask(1, 1, sink_blocks, local_blocks, stride)  # validates the pattern parameters
    require(q_BHLD)
    check_offsets(q_BHLD, k_BHLD, v_BHLD)
    out = torch.empty_like(q_BHLD)
    lse = torch.empty((batch, n_q_heads, seq_len), device=q_BHLD.device, dtype=torch.float32) if write_lse else None
    if seq_len == 0 or batch == 0:
        return out, lse
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    overrides = {k: v for k, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v}
    candidates = [c | overrides for c in configs(q_BHLD.dtype, head_dim, block_size, target(q_BHLD.device))]

    def launch(config: dict) -> None:
        tile = config["BLOCK"]
        n_tiles = _cdiv(seq_len, tile)
        idx, count = _active_blocks(n_tiles, block_size // tile, sink_blocks, local_blocks, stride, q_BHLD.device)
        _block_sparse_fwd_kernel[(n_tiles, batch * n_q_heads)](
            q_BHLD, k_BHLD, v_BHLD, out, lse if lse is not None else out, idx, count,
            scale * LOG2E,
            *q_BHLD.stride(), *k_BHLD.stride(), *v_BHLD.stride(), *out.stride(),
            *(lse.stride() if lse is not None else (0, 0, 0)),
            idx.stride(0),
            n_q_heads, n_q_heads // k_BHLD.shape[1], seq_len,
            WRITE_LSE=write_lse, HEAD_DIM=head_dim,
            DOT_PREC="ieee" if q_BHLD.dtype == torch.float32 else "tf32",
            **config,
        )

    launch_first_fitting(
        launch, candidates,
        lambda c: tile_shared_bytes(c["BLOCK"], c["BLOCK"], head_dim, c["num_stages"], q_BHLD.element_size()),
        q_BHLD.device, f"block_sparse_attention (block {block_size}, head_dim {head_dim})")
    return out, lse


def block_sparse_attention(
    q_BHLD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
    sink_blocks: int, local_blocks: int, stride: int,
    *, block_size: int = 64, sm_scale: float | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> torch.Tensor:
    """Block-sparse causal prefill (see the module doc for the pattern). Returns out [B, Hq, L, D]."""
    return _block_sparse(q_BHLD, k_BHLD, v_BHLD, sink_blocks, local_blocks, stride, block_size,
                         sm_scale, False, num_warps, num_stages)[0]


def block_sparse_attention_lse(
    q_BHLD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
    sink_blocks: int, local_blocks: int, stride: int,
    *, block_size: int = 64, sm_scale: float | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`block_sparse_attention`, also returning lse [B, Hq, L] (float32, natural log)."""
    out, lse = _block_sparse(q_BHLD, k_BHLD, v_BHLD, sink_blocks, local_blocks, stride, block_size,
                             sm_scale, True, num_warps, num_stages)
    assert lse is not None
    return out, lse


def block_sparse_decode(
    q_BHD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
    sink_blocks: int, local_blocks: int, stride: int,
    *, block_size: int = 64, sm_scale: float | None = None, num_splits: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> torch.Tensor:
    """The newest token (position L - 1; its K/V already in the cache) over the blocks its pattern row
    keeps. q [B, Hq, D] or [B, Hq, 1, D]; k/v the full, uncompacted cache [B, Hkv, L, D]."""
    _check(q_BHD if q_BHD.dim() == 4 else q_BHD[:, :, None], k_BHLD, v_BHLD, block_size)
    block_mask(1, 1, sink_blocks, local_blocks, stride)  # validates the pattern parameters
    # The decode kernel visits a list of key tiles: the pattern's blocks cut into tiles it can hold.
    tile = min(block_size, 64 if target(q_BHD.device) == "cuda" else 16)
    n_tiles = _cdiv(k_BHLD.shape[2], tile)
    tiles = _decode_blocks(n_tiles, block_size // tile, sink_blocks, local_blocks, stride, q_BHD.device)
    return _decode(q_BHD, k_BHLD, v_BHLD, None, tiles, sm_scale, num_splits, tile, num_warps, num_stages)[0]


def block_sparse_attention_ref(
    q_BHLD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
    sink_blocks: int, local_blocks: int, stride: int,
    *, block_size: int = 64, sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch reference in the inputs' dtype: dense scores under :func:`token_mask`. (out, lse)."""
    seq_len, head_dim = q_BHLD.shape[2], q_BHLD.shape[3]
    group = q_BHLD.shape[1] // k_BHLD.shape[1]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    keep_LL = token_mask(seq_len, seq_len, block_size, sink_blocks, local_blocks, stride, q_BHLD.device)
    k = k_BHLD.repeat_interleave(group, dim=1)
    v = v_BHLD.repeat_interleave(group, dim=1)
    scores = (q_BHLD @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~keep_LL, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)


def block_sparse_decode_ref(
    q_BHD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
    sink_blocks: int, local_blocks: int, stride: int,
    *, block_size: int = 64, sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch reference for :func:`block_sparse_decode`: (out like q, lse)."""
    len_kv = k_BHLD.shape[2]
    keep_L = token_mask(1, len_kv, block_size, sink_blocks, local_blocks, stride, q_BHD.device)[0]
    return decode_attention_ref(q_BHD, k_BHLD, v_BHLD, sm_scale=sm_scale,
                                key_mask_BL=keep_L.expand(k_BHLD.shape[0], len_kv))
