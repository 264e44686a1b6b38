"""LongGen (ICLR 2025): full attention in a third of the layers, sparse attention in the rest.

Full layers (default: the middle third, `range(n // 3, 2 * n // 3)`, which the paper found best)
store every token. Sparse layers attend with one of two patterns and store only the KV a later
query can still reach, so both the stored KV and the peak of prefill drop:

* `sink_window`: query q sees keys k <= q with k < sink (attention sink) or q - k < window. Once
  the next position is P, a stored key is reachable iff k < sink or k > P - window: the layer
  keeps min(P, sink + window - 1) tokens; each query sees sink + window keys (itself included).
  Defaults sink 64 + window 1984 = 2048 keys: the paper's "about 2K tokens" per sparse layer.
* `strided`: block-sparse over blocks of `block` tokens, exactly the convention of
  `segbench.kernels.block_sparse.block_mask` (the one definition of the pattern): query block i
  sees key block j <= i if j < sink_blocks, i - j < local_blocks or j % stride == stride - 1.
  A future query reaches the sink blocks, every stride block, and the local blocks of the block
  holding the next position P: kept = P's row of the pattern before P, which grows as P/(block *
  stride) (every stride block stays forever). Defaults block 64 (the kernel's tile), 1 sink block,
  16 local blocks, stride 128: near 128K a query sees 1 + 16 + 16 blocks (one shared) ~ 2K tokens,
  the budget of sink_window, so the two patterns compare at equal attention cost.

Positions are never renumbered (RoPE is applied before caching). Prefill is `one_shot` or
`chunked`; either way a sparse layer compacts its KV right after its own attention, so at most
one layer at a time holds more than its budget. Full layers attend like full attention's chunked
prefill: no mask, bottom-right causal, no [chunk x context] tensor (`hf.bottom_right_causal`).
Sparse prefill attention runs in tiles of `query_tile` queries, each over the keys it can reach
with an explicit boolean mask (the mask scales with the budget, not the context); on CUDA
one-shot `strided` runs the Triton block-sparse kernel instead. Decode needs no mask: a
compacted cache plus the new token is exactly what the new query may attend to.

Caches are written in place (`hf.InPlaceLayer` / `hf.PositionedLayer`): full layers preallocate
the prompt, sparse layers their most in flight; a sparse layer evicts by moving kept tokens from
its end into the freed slots (stored order is then not position order; attention and the masks
only read positions), so a decode step copies one token per layer, not the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from segbench import hf, memory_model
from segbench.method import Generation, MemoryEstimate, Method, Unsupported, register_method
from segbench.models import ModelShape

try:  # the pattern's one definition (pure torch) and, on CUDA, its Triton kernel
    from segbench.kernels import _triton as _kernel_runtime
    from segbench.kernels import block_sparse as _block_sparse
except ImportError:  # pragma: no cover - only where the kernels package is missing
    _block_sparse = _kernel_runtime = None

LAYER_SETS = ("middle_third", "all", "none")


@dataclass(frozen=True)
class LongGenParams:
    full_layers: str | tuple[int, ...] = "middle_third"  # or "all" (= full attention), "none", or indices
    pattern: Literal["sink_window", "strided"] = "sink_window"
    sink: int = 64
    window: int = 1984
    block: int = 64
    sink_blocks: int = 1
    local_blocks: int = 16
    stride: int = 128
    prefill: Literal["one_shot", "chunked"] = "one_shot"
    chunk_size: int = 4096
    query_tile: int = 2048  # sparse prefill queries per masked SDPA call: mask 2048 x ~4K bools = 8 MiB

    def __post_init__(self) -> None:
        if isinstance(self.full_layers, str) and self.full_layers not in LAYER_SETS:
            raise ValueError(f"full_layers must be one of {', '.join(LAYER_SETS)} or a list of layer indices")
        if not isinstance(self.full_layers, str) and (
            min(self.full_layers, default=0) < 0 or len(set(self.full_layers)) != len(self.full_layers)
        ):
            raise ValueError(f"full_layers must be distinct indices >= 0, got {list(self.full_layers)}")
        for name in ("window", "block", "local_blocks", "chunk_size", "query_tile"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("sink", "sink_blocks", "stride"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class _Step(NamedTuple):
    """The forward keyword that reaches the attention function: who attends, and over which cache."""

    method: LongGen
    cache: object


def _longgen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                       longgen: _Step | None = None, **kwargs):
    if longgen is None:
        raise RuntimeError("longgen attention needs the `longgen=` forward argument that LongGen passes")
    return longgen.method.attend(module, query, key, value, scaling, longgen.cache.layers[module.layer_idx])


@register_method("longgen")
class LongGen(Method):
    summary = "Hybrid: full attention in the middle third of layers, sink+window or strided sparse (compacted KV) elsewhere."
    lowers = ("stored_kv", "peak_prefill")
    Params = LongGenParams

    @classmethod
    def small_params(cls) -> dict:
        # The defaults (sink 64 + window 1984) evict nothing on the matrix's 160-token prompt, so
        # the sparse layers would be full attention there. Sink 4 + window 24 keeps 27 of 160
        # tokens in the sparse layers (0, 2, 3 of 4; layer 1 is the middle third), evicts during
        # prefill and on every decode step, and a query tile of 40 splits the one-shot sparse
        # prefill into 4 tiles, so tiling, eviction and the chunked path (chunk 48 > window) all run.
        return {"pattern": "sink_window", "sink": 4, "window": 24, "query_tile": 40}

    # --- the pattern
    def full_layer_ids(self, num_layers: int) -> list[int]:
        spec = self.params.full_layers
        if spec == "middle_third":
            return list(range(num_layers // 3, 2 * num_layers // 3))
        if spec == "all":
            return list(range(num_layers))
        return [] if spec == "none" else sorted(spec)

    def allowed(self, q_pos_Q: torch.Tensor, k_pos_K: torch.Tensor) -> torch.Tensor:
        """bool [Q, K]: may the query at each position attend to the key at each (original) position."""
        p, q, k = self.params, q_pos_Q[:, None], k_pos_K[None, :]
        if p.pattern == "sink_window":
            return (k <= q) & ((k < p.sink) | (k > q - p.window))
        first, last = int(q_pos_Q.min()) // p.block, int(q_pos_Q.max()) // p.block
        blocks = _block_sparse.block_mask(last - first + 1, last + 1, p.sink_blocks, p.local_blocks, p.stride)
        blocks = blocks.to(q_pos_Q.device)[q_pos_Q // p.block - first]
        return blocks[:, (k_pos_K // p.block).clamp(max=last)] & (k <= q)

    def kept_tokens(self, next_pos: int) -> int:
        """Tokens a sparse layer stores once it has seen positions [0, next_pos): those next_pos can reach."""
        p = self.params
        if p.pattern == "sink_window":
            return min(next_pos, p.sink + p.window - 1)
        i = next_pos // p.block  # the next query's block: every block before it kept by its row, plus its own start
        row = _block_sparse.block_mask(1, i + 1, p.sink_blocks, p.local_blocks, p.stride)[0]
        return int(row[:i].sum()) * p.block + next_pos - i * p.block

    # --- the harness
    def check(self, shape: ModelShape, context_len: int) -> None:
        ids = self.full_layer_ids(shape.num_layers)
        if ids and max(ids) >= shape.num_layers:
            raise Unsupported(f"full_layers {ids} out of range: {shape.name} has layers 0..{shape.num_layers - 1}")
        if self.params.pattern == "strided" and _block_sparse is None:
            raise Unsupported("the strided pattern needs segbench.kernels.block_sparse (its block_mask)")

    def setup(self, model: torch.nn.Module, *, device: str, dtype: str) -> None:
        if hf.uses_sliding_window(model):  # LongGen's full layers must be full: a config window would change them
            raise Unsupported("the model's config gives layers a sliding window of their own; LongGen needs full layers")
        # hf.no_mask: every mask is built here, from stored positions
        hf.register_attention("segbench_longgen", _longgen_attention, hf.no_mask)
        hf.set_attention(model, "segbench_longgen")
        n = model.config.num_hidden_layers
        self._sparse = sorted(set(range(n)) - set(self.full_layer_ids(n)))

    def attention_backend(self) -> str:
        return hf.BACKENDS.summary()  # SDPA kernels and, where it ran, triton:block_sparse

    def prefill(self, model: torch.nn.Module, input_ids: torch.Tensor) -> Generation:
        length = input_ids.shape[1]
        step = self.params.chunk_size if self.params.prefill == "chunked" else length
        # Sparse layers preallocate only what they hold at most (budget at a chunk start + the chunk).
        in_flight = max(self.kept_tokens(s) + min(step, length - s) for s in range(0, length, step))
        cache = hf.new_positioned_cache(model, self._sparse, capacity=length, positioned_capacity=in_flight)
        for start in range(0, input_ids.shape[1], step):
            logits = hf.forward_last_logits(model, input_ids[:, start : start + step], cache, longgen=_Step(self, cache))
        return Generation(logits=logits, state=cache, next_position=input_ids.shape[1])

    def decode(self, model: torch.nn.Module, token_ids: torch.Tensor, gen: Generation) -> Generation:
        logits = hf.forward_last_logits(model, token_ids, gen.state, longgen=_Step(self, gen.state))
        return Generation(logits=logits, state=gen.state, next_position=gen.next_position + token_ids.shape[1])

    def kv_cache_bytes(self, gen: Generation) -> int:
        return hf.tensor_bytes(hf.cache_tensors(gen.state))

    # --- attention, called by `_longgen_attention` for every layer
    def attend(self, module, q_BHQD, k_BHKD, v_BHKD, scaling, layer) -> tuple[torch.Tensor, None]:
        n_q, n_k = q_BHQD.shape[2], k_BHKD.shape[2]
        if not isinstance(layer, hf.PositionedLayer):  # full layer: causal over everything stored
            # No mask: one-shot prefill takes SDPA's is_causal (flash), a later chunk bottom-right
            # causal without a [chunk x context] mask (hf.bottom_right_causal), decode sees all.
            return hf.segbench_sdpa_forward(module, q_BHQD, k_BHKD, v_BHKD, None, scaling=scaling)
        if n_q == 1:  # decode: the compacted cache plus this token is exactly what it may see
            out_BQHD, _ = hf.segbench_sdpa_forward(module, q_BHQD, k_BHKD, v_BHKD, None, scaling=scaling)
        elif n_q == n_k and self._kernel_runs(q_BHQD):
            out_BHQD = _block_sparse.block_sparse_attention(
                q_BHQD, k_BHKD, v_BHKD, self.params.sink_blocks, self.params.local_blocks, self.params.stride,
                block_size=self.params.block, sm_scale=scaling)
            hf.BACKENDS.add("triton:block_sparse")
            out_BQHD = out_BHQD.transpose(1, 2).contiguous()
        else:
            out_BQHD = self.sparse_attention(module, q_BHQD, k_BHKD, v_BHKD, layer.positions, scaling)
        if self.kept_tokens(layer.seen) < n_k:  # evict what no later query can reach, right away
            layer.keep(self.allowed(torch.tensor([layer.seen], device=q_BHQD.device), layer.positions)[0])
        return out_BQHD, None

    def sparse_attention(self, module, q_BHQD, k_BHKD, v_BHKD, pos_K, scaling) -> torch.Tensor:
        """Masked SDPA over the pattern, `query_tile` queries at a time, each tile over the keys it reaches.

        The queries are the last n_q stored positions. A tile [a, b] reaches exactly what a query
        at a reaches before a (the eviction rule) plus [a, b]: memory and work scale with the
        budget, not with the context.
        """
        n_q = q_BHQD.shape[2]
        pos_Q = pos_K[-n_q:]
        out_BQHD = q_BHQD.new_empty(q_BHQD.shape[0], n_q, q_BHQD.shape[1], q_BHQD.shape[3])
        for t0 in range(0, n_q, self.params.query_tile):
            tile_T = pos_Q[t0 : t0 + self.params.query_tile]
            first, last = tile_T[:1], tile_T[-1]
            reach_K = self.allowed(first, pos_K)[0] | ((pos_K >= first) & (pos_K <= last))
            idx = reach_K.nonzero()[:, 0]
            mask_TK = self.allowed(tile_T, pos_K[idx])
            out, _ = hf.segbench_sdpa_forward(
                module, q_BHQD[:, :, t0 : t0 + tile_T.numel()], k_BHKD.index_select(2, idx),
                v_BHKD.index_select(2, idx), mask_TK, scaling=scaling)
            out_BQHD[:, t0 : t0 + tile_T.numel()] = out
        return out_BQHD

    def _kernel_runs(self, q_BHQD: torch.Tensor) -> bool:
        """The Triton kernel covers one-shot `strided` on CUDA, at the tile sizes it compiles for."""
        p, d = self.params, q_BHQD.shape[-1]
        return (p.pattern == "strided" and q_BHQD.is_cuda and _kernel_runtime is not None
                and _kernel_runtime.can_run(q_BHQD.device) and p.block >= 16 and not p.block & (p.block - 1)
                and d >= 16 and not d & (d - 1))

    # --- memory
    def estimate(self, shape: ModelShape, context_len: int, dtype_bytes: int, device: str = "cuda") -> MemoryEstimate:
        p, L = self.params, context_len
        n_full = len(self.full_layer_ids(shape.num_layers))
        n_sparse = shape.num_layers - n_full
        weights = memory_model.weights_bytes(shape, dtype_bytes)
        # Stored after prefill: full layers every token, sparse layers what position L can reach.
        kv = memory_model.kv_bytes(shape, L, dtype_bytes, n_full) + memory_model.kv_bytes(
            shape, self.kept_tokens(L), dtype_bytes, n_sparse)
        chunk = min(p.chunk_size, L) if p.prefill == "chunked" else L
        # Most a sparse layer holds before its own eviction: its budget at a chunk start + the chunk.
        starts = range(0, L, chunk)
        in_flight = max(self.kept_tokens(s) + min(chunk, L - s) for s in starts)
        budget = max(self.kept_tokens(s) for s in [*starts, L])
        # Peak KV: full layers at L, sparse layers at their largest budget, one sparse layer in flight.
        peak_kv = memory_model.kv_bytes(shape, L, dtype_bytes, n_full) + memory_model.kv_bytes(
            shape, budget, dtype_bytes, n_sparse) + (memory_model.kv_bytes(shape, in_flight, dtype_bytes, 1) if n_sparse else 0)
        # A full layer's chunk attends without a mask or expanded K/V (hf.bottom_right_causal); a
        # sparse tile adds its boolean mask and gathered K/V to the attention-time working set.
        tile = min(p.query_tile, chunk)
        tile_keys = min(in_flight, budget + tile)
        working = memory_model.decoder_layer_peak_bytes(shape, chunk, dtype_bytes)
        if n_sparse:
            sparse_work = (memory_model.mask_bytes(tile, tile_keys, dtype_bytes) + memory_model.kv_bytes(shape, tile_keys, dtype_bytes, 1)
                           + memory_model.expanded_kv_bytes(shape, tile_keys, dtype_bytes, device))
            working = max(working, memory_model.decoder_attention_bytes(shape, chunk, dtype_bytes) + sparse_work)
        peak_kv += memory_model.kv_reserve_bytes(shape, dtype_bytes, device)
        peak = weights + peak_kv + working + memory_model.logits_bytes(shape)
        return MemoryEstimate(stored_kv_bytes=kv, peak_prefill_bytes=peak, weights_bytes=weights)

    def kv_reduction(self, shape: ModelShape, context_len: int) -> float:
        """Fraction of full attention's stored KV that this setting saves at `context_len` (dtype cancels)."""
        stored = self.estimate(shape, context_len, 2).stored_kv_bytes
        return 1.0 - stored / memory_model.kv_bytes(shape, context_len, 2)
