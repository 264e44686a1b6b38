"""Bookkeeping of segmented execution: RoPE re-numbering, the retrieval pool, block selection, the window.

Pure tensor code over [B, H, L, D] layouts (H the KV heads unless the name says query heads); the
only model-facing call is `hf.rotary_cos_sin`, so the RoPE tables are the model's own.

RoPE is relative: a query at position p and a key at position t interact through p - t only. So a
window [visible; segment] renumbered to 0..V+S-1 is computed exactly by giving the segment its
local positions 0..S-1 (position_ids of the forward) and the visible keys positions -V..-1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from segbench import hf

# Names the execution rule, recorded with trained checkpoints: before it, the segment's newest query
# chose the long-range blocks (not causal) and long-range heads had no tail.
SEGMENTED_RULE = "causal-prefix-v1: previous segment's last query selects; long-range tail"

# The paper's long-range layers for the 32-layer LLaMA-2-7B.
PAPER_LONG_RANGE_LAYERS = (6, 8, 11, 18)
PAPER_NUM_LAYERS = 32


def scale_layers(num_layers: int) -> tuple[int, ...]:
    """The paper's long-range layers mapped proportionally onto `num_layers` (round half up, deduplicated).

    32 -> (6, 8, 11, 18); 28 -> (5, 7, 10, 16); 4 -> (1, 2).
    """
    scaled = {min(num_layers - 1, int(i * num_layers / PAPER_NUM_LAYERS + 0.5)) for i in PAPER_LONG_RANGE_LAYERS}
    return tuple(sorted(scaled))


def query_heads(kv_heads: list[int], group: int) -> list[int]:
    """Query heads reading the given KV heads: query head h reads KV head h // group (HF repeat_kv order)."""
    return [h * group + g for h in kv_heads for g in range(group)]


# --------------------------------------------------------------------------------------------
# RoPE on stored keys


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rope:
    """Rotations of stored keys with the model's own tables (the rotate_half layout of Llama/Qwen2/Mistral).

    The tables may carry an attention factor s (YaRN, longrope): cos^2 + sin^2 = s^2. The model
    computes s * R(p) k; `unrotate` inverts exactly that and `shift` moves an already rotated key
    by a pure rotation, so s is applied once whatever path a key took. Arithmetic runs in float32
    and rounds once to the keys' dtype.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model

    def _tables(self, positions_L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos_1LD, sin_1LD = hf.rotary_cos_sin(self._model, positions_L[None], torch.float32)
        return cos_1LD, sin_1LD

    @staticmethod
    def _apply(x_BHLD: torch.Tensor, cos_1LD: torch.Tensor, sin_1LD: torch.Tensor) -> torch.Tensor:
        x = x_BHLD.float()
        return (x * cos_1LD + _rotate_half(x) * sin_1LD).to(x_BHLD.dtype)

    def _positions(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        return torch.arange(start, start + length, device=device)

    def rotate(self, x_BHLD: torch.Tensor, start: int) -> torch.Tensor:
        """Pre-RoPE keys (or queries) as the model rotates them at positions start, start+1, ..."""
        cos, sin = self._tables(self._positions(start, x_BHLD.shape[2], x_BHLD.device))
        return self._apply(x_BHLD, cos, sin)

    def unrotate(self, x_BHLD: torch.Tensor, start: int) -> torch.Tensor:
        """The pre-RoPE vectors of keys (or queries) the model rotated at positions start, start+1, ..."""
        cos, sin = self._tables(-self._positions(start, x_BHLD.shape[2], x_BHLD.device))
        scale_sq = cos * cos + sin * sin  # s^2: s R(-p) undoes R(p) up to s^2
        return self._apply(x_BHLD, cos / scale_sq, sin / scale_sq)

    def shift(self, x_BHLD: torch.Tensor, delta: int) -> torch.Tensor:
        """Rotated keys moved by `delta` positions (a pure rotation; the attention factor stays once)."""
        cos, sin = self._tables(torch.full((1,), delta, device=x_BHLD.device))
        scale = (cos * cos + sin * sin).sqrt()
        return self._apply(x_BHLD, cos / scale, sin / scale)


# --------------------------------------------------------------------------------------------
# The read-only pool of earlier segments, and what a segment retrieves from it


class Pool:
    """Pre-RoPE keys and values of every closed segment, [B, H, C, D], for the long-range heads of a layer.

    Storage is reserved once (prefill knows how many tokens will close), so appending a segment is a
    copy into place rather than a torch.cat that briefly holds the pool twice.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.k_BHLD: torch.Tensor | None = None
        self.v_BHLD: torch.Tensor | None = None
        self.length = 0

    def append(self, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor, reserve: int = 0) -> None:
        need = self.length + k_BHLD.shape[2]
        if self.k_BHLD is None or need > self.k_BHLD.shape[2]:
            capacity = max(need, reserve)
            grown_k = k_BHLD.new_empty((*k_BHLD.shape[:2], capacity, k_BHLD.shape[3]), device=self.device)
            grown_v = torch.empty_like(grown_k)
            if self.k_BHLD is not None:
                grown_k[:, :, : self.length] = self.k_BHLD[:, :, : self.length]
                grown_v[:, :, : self.length] = self.v_BHLD[:, :, : self.length]
            self.k_BHLD, self.v_BHLD = grown_k, grown_v
        self.k_BHLD[:, :, self.length : need] = k_BHLD.to(self.device)
        self.v_BHLD[:, :, self.length : need] = v_BHLD.to(self.device)
        self.length = need

    def filled(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_BHLD[:, :, : self.length], self.v_BHLD[:, :, : self.length]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.k_BHLD, self.v_BHLD) if t is not None]


def select_blocks(q_BHD: torch.Tensor, k_pool_BKLD: torch.Tensor, block: int, topk: int, scale: float) -> torch.Tensor:
    """Indices of the `topk` pool blocks the query ranks highest, per KV head, ascending: [B, K, k].

    `q_BHD` holds the pre-RoPE query of every query head reading these KV heads (GQA group g of
    KV head k is query head k * G + g); keys are pre-RoPE too, so a score is content alone, as if
    every candidate sat at the query's own position (no candidate wins for being near).
    Per query head the scores become a softmax over the pool, so heads compare on one scale; the
    group's probabilities are averaged (GQA: one selection per KV head, K/V never expanded); a
    block's score is the max over its tokens, since a needle is one token a mean would dilute.
    """
    batch, n_q_heads, dim = q_BHD.shape
    n_kv_heads, length = k_pool_BKLD.shape[1], k_pool_BKLD.shape[2]
    group = n_q_heads // n_kv_heads
    n_blocks = length // block
    q_BKGD = q_BHD.view(batch, n_kv_heads, group, dim).to(k_pool_BKLD.dtype)
    logits_BKGL = torch.matmul(q_BKGD, k_pool_BKLD.transpose(-1, -2)).float() * scale
    probs_BKL = logits_BKGL.softmax(dim=-1).mean(dim=2)
    block_scores_BKN = probs_BKL[:, :, : n_blocks * block].view(batch, n_kv_heads, n_blocks, block).amax(dim=-1)
    top_BKk = block_scores_BKN.topk(min(topk, n_blocks), dim=-1).indices
    return top_BKk.sort(dim=-1).values  # the prefix keeps the sequence's order


def gather_blocks(x_BKLD: torch.Tensor, blocks_BKk: torch.Tensor, block: int) -> torch.Tensor:
    """The tokens of the chosen blocks, concatenated in the given order: [B, K, k * block, D]."""
    offsets = torch.arange(block, device=blocks_BKk.device)
    tokens_BKT = (blocks_BKk[..., None] * block + offsets).flatten(-2)
    return x_BKLD.gather(2, tokens_BKT[..., None].expand(-1, -1, -1, x_BKLD.shape[-1]).to(x_BKLD.device))


# --------------------------------------------------------------------------------------------
# Attention over one window


def window_attention(module: torch.nn.Module, q_BHLD: torch.Tensor, k_BKWD: torch.Tensor, v_BKWD: torch.Tensor,
                     n_vis: int, scaling: float | None) -> torch.Tensor:
    """The segment's newest Lq queries over one window [visible; segment so far]: [B, Lq, Hq, D].

    `k_BKWD`/`v_BKWD` are the window as stored (views of the preallocated buffer, nothing is
    concatenated): the first `n_vis` keys are fully visible, the segment's keys causally,
    bottom-right aligned (query row r is the window's key W - Lq + r). A whole segment with
    nothing visible and a single query need no mask and take SDPA's own causal / unmasked path,
    exactly as full attention does. Otherwise `hf.bottom_right_causal`, the same mask-free path
    as full attention's chunked prefill (never is_causal with Lq < Lk, which SDPA would align
    top-left). K/V stay at the KV heads.
    """
    n_q, n_win = q_BHLD.shape[2], k_BKWD.shape[2]
    if n_q == 1 or (n_vis == 0 and n_q == n_win):
        return hf.segbench_sdpa_forward(module, q_BHLD, k_BKWD, v_BKWD, None, scaling=scaling)[0]
    # Bottom-right causal over the window: every visible key unmasked, the segment causally, merged
    # by log-sum-exp (or flash's lower-right causal on CUDA) -- no [Lq x W] mask, and the upper
    # triangle of the segment is skipped rather than computed and masked.
    return hf.bottom_right_causal(q_BHLD, k_BKWD, v_BKWD, scale=scaling)


# --------------------------------------------------------------------------------------------
# What each layer keeps between forwards


class SegmentGeometry(Protocol):
    """The parameters the bookkeeping reads (the adapter's Params has them)."""

    segment: int
    tail: int
    topk: int
    block: int
    long_range_tail: bool


WindowFn = Callable[..., torch.Tensor]  # (module, q, k_window, v_window, n_vis, scaling) -> [B, Lq, Hq, D]


@dataclass
class SegmentedState:
    """Decode state of a segmented generation: every layer's KV plus where the current segment stands."""

    params: SegmentGeometry
    rope: Rope
    layers: list[LayerKV]
    window: WindowFn  # attention over one window; the adapter picks kernel or torch
    seg_len: int = 0  # tokens in the current segment
    reserve: int = 0  # pool tokens to reserve at the first close (prefill knows them)


class HeadGroup:
    """KV heads of one layer that see the same kind of window, and that window's storage.

    While a segment is open the window lives in ONE preallocated buffer per K and V,
    [B, H, n_vis + S, D] = [prefix R | tail T | segment S]: new tokens are written in place, the
    attention reads a view of the filled part, so a decode step copies one token, never the window.
    Between segments (after a close, before the next token) only the next window's visible part is
    held, as `prefix` and `tail` tensors of exactly their length; the buffer is allocated when the
    segment opens (so a prompt ending on a boundary stores no empty segment).
    """

    def __init__(self, heads: list[int], retrieves: bool, keeps_tail: bool) -> None:
        self.heads, self.retrieves, self.keeps_tail = heads, retrieves, keeps_tail
        self.k_BKWD: torch.Tensor | None = None  # the open window's buffers
        self.v_BKWD: torch.Tensor | None = None
        self.n_vis = 0  # visible tokens at the front of the open window
        self.n_tail = 0  # of which the last n_tail are the tail
        self.prefix_k: torch.Tensor | None = None  # the next window's visible part, between segments
        self.prefix_v: torch.Tensor | None = None  # retrieved blocks, keys rotated to -(R+T)..-(T+1)
        self.tail_k: torch.Tensor | None = None  # carried tail, keys rotated to -T..-1
        self.tail_v: torch.Tensor | None = None
        self._index: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def index(self, group: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(KV-head index, query-head index) tensors on `device`, built once."""
        if device not in self._index:
            self._index[device] = (torch.tensor(self.heads, device=device),
                                   torch.tensor(query_heads(self.heads, group), device=device))
        return self._index[device]

    def tensors(self) -> list[torch.Tensor]:
        held = [self.k_BKWD, self.v_BKWD, self.prefix_k, self.prefix_v, self.tail_k, self.tail_v]
        return [t for t in held if t is not None]

    def open(self, k_new_BKLD: torch.Tensor, segment: int) -> None:
        """Allocate the window [prefix; tail; segment] and move the visible part into it."""
        parts = [(self.prefix_k, self.prefix_v), (self.tail_k, self.tail_v)]
        parts = [(k, v) for k, v in parts if k is not None]
        self.n_vis = sum(k.shape[2] for k, _ in parts)
        self.n_tail = 0 if self.tail_k is None else self.tail_k.shape[2]
        b, _, _, d = k_new_BKLD.shape
        self.k_BKWD = k_new_BKLD.new_empty((b, len(self.heads), self.n_vis + segment, d))
        self.v_BKWD = torch.empty_like(self.k_BKWD)
        at = 0
        for k, v in parts:
            self.k_BKWD[:, :, at : at + k.shape[2]] = k
            self.v_BKWD[:, :, at : at + k.shape[2]] = v
            at += k.shape[2]
        self.prefix_k = self.prefix_v = self.tail_k = self.tail_v = None

    def write(self, k_BKLD: torch.Tensor, v_BKLD: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens at segment position `start`; the window up to them (views)."""
        at, end = self.n_vis + start, self.n_vis + start + k_BKLD.shape[2]
        self.k_BKWD[:, :, at:end] = k_BKLD
        self.v_BKWD[:, :, at:end] = v_BKLD
        return self.k_BKWD[:, :, :end], self.v_BKWD[:, :, :end]

    def segment_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_BKWD[:, :, self.n_vis :], self.v_BKWD[:, :, self.n_vis :]

    def close_tail(self, p: SegmentGeometry, rope: Rope, detach_older: bool = True) -> None:
        """The next tail: the last M tokens of [tail; segment], moved by -S (one rotation per close).

        Gradient rule: only the closing segment's own KV keeps autograd; tail tokens carried from
        older segments are detached here, so a later segment's loss reaches back one segment only.
        """
        take = min(p.tail, self.n_tail + p.segment) if self.keeps_tail else 0
        if take == 0:
            return
        seg_start = self.n_vis  # window index of the segment's first token
        from_old = max(0, take - p.segment)
        k_parts, v_parts = [], []
        if from_old:
            k_old, v_old = self.k_BKWD[:, :, seg_start - from_old : seg_start], self.v_BKWD[:, :, seg_start - from_old : seg_start]
            k_parts.append(k_old.detach() if detach_older else k_old)
            v_parts.append(v_old.detach() if detach_older else v_old)
        k_parts.append(self.k_BKWD[:, :, seg_start + p.segment - (take - from_old) :])
        v_parts.append(self.v_BKWD[:, :, seg_start + p.segment - (take - from_old) :])
        # A copy either way (cat, or the rotation's output; .clone for the values), so the tail owns
        # exactly its T tokens and no view pins the closed window's buffer.
        self.tail_k = rope.shift(torch.cat(k_parts, dim=2) if from_old else k_parts[0], -p.segment)
        self.tail_v = torch.cat(v_parts, dim=2) if from_old else v_parts[0].clone()

    def release(self) -> None:
        self.k_BKWD = self.v_BKWD = None
        self.n_vis = self.n_tail = 0


class LayerKV:
    """One decoder layer: its head groups (local heads; long-range heads) and the long-range pool.

    Gradient rule (training runs this same code with autograd): a segment's loss reaches the KV
    carried from the immediately preceding segment (its tail) and nothing older: the pool and the
    prefix gathered from it are detached, and tail tokens of older segments are detached when a
    segment closes. The two class flags exist for tests' controls only.

    Local heads see [tail; segment]. Long-range heads see [prefix; tail; segment] (`long_range_tail`,
    else [prefix; segment]); the prefix is chosen once per segment, when the previous one closes, by
    that segment's last query (see `_select`), so every token of a segment, in prefill and in decode,
    sees the same blocks, and none was chosen by a token after it.
    """

    def __init__(self, n_kv_heads: int, lr_heads: list[int], pool_device: str, long_range_tail: bool = True) -> None:
        self.lr_heads = lr_heads
        self.local_heads = [h for h in range(n_kv_heads) if h not in lr_heads]
        self.groups: list[HeadGroup] = []
        if self.local_heads:
            self.groups.append(HeadGroup(self.local_heads, retrieves=False, keeps_tail=True))
        self.lr_group = HeadGroup(lr_heads, retrieves=True, keeps_tail=long_range_tail) if lr_heads else None
        if self.lr_group:
            self.groups.append(self.lr_group)
        self.pool = Pool(pool_device) if lr_heads else None  # long-range heads only, pre-RoPE, detached

    detach_pool: ClassVar[bool] = True
    detach_older_tail: ClassVar[bool] = True

    def tensors(self) -> list[torch.Tensor]:
        return [t for g in self.groups for t in g.tensors()] + (self.pool.tensors() if self.pool else [])

    def attend(self, module, q_BHLD, k_BKLD, v_BKLD, scaling: float, state: SegmentedState) -> torch.Tensor:
        """The new tokens' attention, [B, Lq, Hq, D]; q/k arrive rotated at their segment-local positions."""
        p, start = state.params, state.seg_len
        n_kv = len(self.local_heads) + len(self.lr_heads)
        group = q_BHLD.shape[1] // n_kv
        single = len(self.groups) == 1  # one kind of head: no gathering of heads at all
        out_BLHD = None if single else q_BHLD.new_empty(q_BHLD.shape[0], q_BHLD.shape[2], q_BHLD.shape[1], q_BHLD.shape[3])
        for g in self.groups:
            kv_idx, q_idx = g.index(group, q_BHLD.device)
            k_g, v_g, q_g = (k_BKLD, v_BKLD, q_BHLD) if single else (
                k_BKLD.index_select(1, kv_idx), v_BKLD.index_select(1, kv_idx), q_BHLD.index_select(1, q_idx))
            if start == 0:
                g.open(k_g, p.segment)
            k_win, v_win = g.write(k_g, v_g, start)
            out_g = state.window(module, q_g, k_win, v_win, g.n_vis, scaling)
            if single:
                out_BLHD = out_g
            else:
                out_BLHD[:, :, q_idx] = out_g
        if start + k_BKLD.shape[2] == p.segment:
            self._close(q_BHLD[:, :, -1:], group, scaling, state)
        return out_BLHD

    def _close(self, q_last_BH1D: torch.Tensor, group: int, scaling: float, state: SegmentedState) -> None:
        """The segment is full: tails move on, the long-range heads' segment joins the pool, and
        the next segment's prefix is chosen by this segment's last query."""
        p, rope = state.params, state.rope
        for g in self.groups:
            g.close_tail(p, rope, self.detach_older_tail)
        if self.lr_group is not None:
            seg_k, seg_v = self.lr_group.segment_kv()
            # A closed segment sat at 0..S-1. The pool is read-only for gradients: detached.
            k_pre = rope.unrotate(seg_k, 0)
            if self.detach_pool:
                k_pre, seg_v = k_pre.detach(), seg_v.detach()
            self.pool.append(k_pre, seg_v, state.reserve)
            _, q_idx = self.lr_group.index(group, q_last_BH1D.device)
            q_pre_BH1D = rope.unrotate(q_last_BH1D.index_select(1, q_idx), p.segment - 1)
            self._select(q_pre_BH1D[:, :, 0], scaling, state)
        for g in self.groups:
            g.release()

    def _select(self, q_pre_BHD: torch.Tensor, scaling: float, state: SegmentedState) -> None:
        """The next segment's prefix: the top-k pool blocks for the closing segment's last query.

        Blocks that overlap the long-range heads' own tail are not candidates (their tokens are
        already visible); the pool's other blocks, the just-closed segment's included, are.
        """
        p, g = state.params, self.lr_group
        n_tail = 0 if g.tail_k is None else g.tail_k.shape[2]
        n_blocks = (self.pool.length - n_tail) // p.block
        if n_blocks <= 0 or p.topk == 0:
            return
        k_pool_BKLD, v_pool_BKLD = self.pool.filled()
        k_pool_BKLD, v_pool_BKLD = k_pool_BKLD[:, :, : n_blocks * p.block], v_pool_BKLD[:, :, : n_blocks * p.block]
        blocks_BKk = select_blocks(q_pre_BHD.to(self.pool.device), k_pool_BKLD, p.block, p.topk, scaling)
        k_pre_BKRD = gather_blocks(k_pool_BKLD, blocks_BKk, p.block).to(q_pre_BHD.device)
        g.prefix_v = gather_blocks(v_pool_BKLD, blocks_BKk, p.block).to(q_pre_BHD.device)
        g.prefix_k = state.rope.rotate(k_pre_BKRD, -(k_pre_BKRD.shape[2] + n_tail))
