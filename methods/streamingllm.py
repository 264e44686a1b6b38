"""StreamingLLM (Xiao et al., 2023): a few attention-sink tokens plus a recent window, nothing else.

What a token sees. The official evaluation runs token by token: each token attends to the first
`sinks` tokens of the sequence, the `window` tokens before it and itself. Here every token sees
exactly that key set, in prefill (chunked) and in decode alike, independent of `chunk_size`.

`positions` (where RoPE puts the keys, relative to the query):
- `cache` (the official code): keys are cached before RoPE and rotated at their slot in the cache
  (sinks at 0..sinks-1, the window after them, the query at its own slot). For a query at t that
  means: window keys at their true distance t - t' (the window is contiguous and ends right before
  the query), and sink i at distance min(t, sinks + window) - i. So we need no re-rotation of the
  window at all: keys are cached rotated at their original positions (by the model, as usual), and
  only the sinks' distance is corrected, by rotating the query back by delta = max(0, t - sinks -
  window) for its attention to the sinks (prefill), or the `sinks` keys forward by delta (decode:
  4 tokens per layer and step, from an untouched copy).
- `original`: keys rotated at their original positions; the sinks at their true distance too.

The ring buffer. Per layer one [B, Hkv, sinks + window + 1, D] buffer for K and one for V
(smaller while the sequence is shorter): sinks at slots 0..sinks-1, then a ring of window + 1
slots in which position p >= sinks lives at slot sinks + (p - sinks) % (window + 1). A decode token
is written into its slot in place (over the position that just left every later token's window),
then one SDPA call runs over the whole buffer, no mask: exactly sinks + window + 1 keys, itself
included. Nothing is copied, concatenated, re-rotated or masked per token. (The extra ring slot is
the one the next token is written into; it is counted in the stored KV.)

Chunked prefill, by a log-sum-exp split, so that nothing of size chunk x (sinks + window + chunk)
is built: chunks of at most `window` tokens (a longer chunk would evict its own keys; the key sets
do not depend on the chunk size, so clamping it changes memory and speed only) attend to
  (a) the cached sinks and ring (one call; a [chunk x cache] additive band mask, built once per
      forward for all layers, hides from query j the j oldest ring keys, gone token by token),
  (b) in `cache` mode with the cache full, the sinks separately, with the queries rotated back by
      their delta (no mask),
  (c) the chunk itself, causal (no mask: a chunk no longer than the window needs no band),
merged with their log-sum-exps; then the chunk's keys are written into their ring slots. The
log-sum-exp comes from `hf.attention_lse`: the CPU flash kernel (`_scaled_dot_product_flash_attention_for_cpu`,
GQA without expanding K/V) or, on CUDA, the memory-efficient kernel (K/V expanded to the query
heads for that call). The first chunk, with nothing cached, is one plain causal SDPA call.

Where this differs from the official code: it evaluates prefill token by token (our chunk_size=1);
the official `cache` mode re-rotates all cached keys at every step, here only the sinks' distance
is corrected (the same relative positions, so the same attention up to rounding); kvpress's
StreamingLLMPress prefills densely and evicts afterwards (same kept positions, dense peak).
With window >= total tokens nothing is evicted and both modes are full attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from segbench import hf, kv, memory_model
from segbench.method import Generation, MemoryEstimate, Method, Unsupported, register_method
from segbench.models import ModelShape

ATTENTION = "segbench_streamingllm"


@dataclass(frozen=True)
class StreamingLLMParams:
    sinks: int = 4  # the paper's four attention sinks
    # sinks + window = 2048 tokens, the same stored KV as snapkv's default (the official streaming
    # demo uses 4 + 2000): the two eviction methods then compare at equal cache size.
    window: int = 2044
    # Half the cache: a chunk's activations and its [chunk x cache] band mask stay below the
    # cache's own size, while 1024-token matmuls still keep a GPU busy. Clamped to `window`.
    chunk_size: int = 1024
    positions: Literal["cache", "original"] = "cache"

    def __post_init__(self) -> None:
        if self.sinks < 0 or self.window < 1 or self.chunk_size < 1:
            raise ValueError(
                f"need sinks >= 0, window >= 1, chunk_size >= 1; got {self.sinks}, {self.window}, {self.chunk_size}"
            )


@dataclass
class RingLayer:
    """One layer's cache: K/V buffers [B, Hkv, C, D] (sinks, then the ring), and in `cache` mode an
    untouched copy of the sink keys (the buffer's sinks get re-rotated in decode)."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    sink_k: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.k, self.v, self.sink_k) if t is not None]


@dataclass
class StreamState:
    layers: list[RingLayer]
    capacity: int  # buffer length while it is allocated: <= sinks + window + 1
    seen: int = 0  # tokens of the sequence so far


@dataclass
class Step:
    """What one forward's attention calls share (every layer caches the same positions)."""

    state: StreamState
    sinks: int
    window: int
    start: int  # position of the forward's first token
    n: int  # tokens in this forward
    pieces: list  # (slice of the new tokens, first buffer slot): where _write copies them
    cached: int  # valid buffer slots before this forward (a prefix of the buffer)
    band_11NC: torch.Tensor | None = None  # additive mask over the cached slots of call (a), or None
    split_sinks: bool = False  # `cache` mode, cache full: sinks in their own call (b)
    back_cos_11ND: torch.Tensor | None = None  # rotate queries back by their delta, for (b)
    back_sin_11ND: torch.Tensor | None = None
    sink_cos_11ND: torch.Tensor | None = None  # decode, `cache` mode: rotate the sinks forward
    sink_sin_11ND: torch.Tensor | None = None
    cache_mode: bool = False  # `positions: cache`: keep an untouched copy of the sink keys


def slot_of(position_N: torch.Tensor, sinks: int, window: int) -> torch.Tensor:
    """Buffer slot of each position: sinks in place, the rest in a ring of window + 1 slots."""
    ring = sinks + torch.remainder(position_N - sinks, window + 1)
    return torch.where(position_N < sinks, position_N, ring)


def cached_positions(seen: int, sinks: int, window: int, device=None) -> torch.Tensor:
    """Position held by each valid buffer slot after `seen` tokens, in slot order [min(seen, S+W+1)].

    Ring slot r holds the latest position p < seen with p = sinks + r (mod window + 1).
    """
    slots = torch.arange(min(seen, sinks + window + 1), device=device)
    r = slots - sinks
    latest = sinks + r + (window + 1) * torch.div(seen - 1 - sinks - r, window + 1, rounding_mode="floor")
    return torch.where(slots < sinks, slots, latest)


# The log-sum-exp attention and merge of the split prefill (module names, so tests can spy on them).
attention_lse, merge = hf.attention_lse, hf.merge_lse


def streaming_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The attention function: query/key/value [B, H, N, D] rotated at their true positions."""
    step: Step = kwargs.pop("streaming_step")
    layer = step.state.layers[module.layer_idx]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if layer.k is None:
        b, kvh, _, d = key.shape
        layer.k = key.new_empty(b, kvh, step.state.capacity, d)
        layer.v = value.new_empty(b, kvh, step.state.capacity, d)
    if step.n == 1:  # decode: write in place, then one call over the valid prefix of the buffer
        _write(layer, step, key, value)
        valid = min(step.cached + 1, layer.k.shape[2])
        k, v = layer.k[:, :, :valid], layer.v[:, :, :valid]
        if step.sink_cos_11ND is not None:  # `cache` mode past the full cache: sinks at i + delta
            layer.k[:, :, : step.sinks] = kv.rope_rotate(layer.sink_k, step.sink_cos_11ND, step.sink_sin_11ND)
        return hf.segbench_sdpa_forward(module, query, k, v, None, scaling=scale, **kwargs)
    out = _prefill_chunk(layer, step, query, key, value, scale, module, kwargs)
    _write(layer, step, key, value)  # after attending: the chunk overwrites keys it saw
    return out


def _write(layer: RingLayer, step: Step, key, value) -> None:
    """Copy the forward's new K/V into their slots: at most three contiguous slices (sinks, the ring
    up to its end, the ring from its start), as plain slice copies (index_copy_ from the model's
    strided K/V is ~100x slower on the CPU)."""
    for src, dst in step.pieces:
        layer.k[:, :, dst : dst + src.stop - src.start] = key[:, :, src]
        layer.v[:, :, dst : dst + src.stop - src.start] = value[:, :, src]
    if step.cache_mode and step.start < step.sinks:
        if layer.sink_k is None:
            layer.sink_k = layer.k.new_empty(*layer.k.shape[:2], step.sinks, layer.k.shape[3])
        new = min(step.sinks, step.start + step.n)
        layer.sink_k[:, :, step.start : new] = layer.k[:, :, step.start : new]


def _prefill_chunk(layer: RingLayer, step: Step, query, key, value, scale, module, kwargs):
    if step.cached == 0:  # nothing cached: plain causal attention over the chunk (n <= window)
        return hf.segbench_sdpa_forward(module, query, key, value, None, scaling=scale, **kwargs)
    parts, s = [], step.sinks
    lo = s if step.split_sinks else 0
    if step.cached > lo:  # (a) cached ring (and sinks, unless split), banded
        k, v = layer.k[:, :, lo : step.cached], layer.v[:, :, lo : step.cached]
        parts.append(attention_lse(query, k, v, step.band_11NC, False, scale))
    if step.split_sinks:  # (b) sinks at distance min(t, sinks + window) - i
        q_back = kv.rope_rotate(query, step.back_cos_11ND, step.back_sin_11ND)
        parts.append(attention_lse(q_back, layer.sink_k, layer.v[:, :, :s], None, False, scale))
    parts.append(attention_lse(query, key, value, None, True, scale))  # (c) the chunk, causal
    return merge(parts).transpose(1, 2).contiguous(), None


@register_method("streamingllm")
class StreamingLLM(Method):
    summary = "Attention sinks + a recent window in a ring buffer; chunked prefill with eviction, so memory stays bounded."
    lowers = ("peak_prefill", "stored_kv")
    Params = StreamingLLMParams

    @classmethod
    def reference_params(cls, total_tokens: int) -> dict:
        return {"window": total_tokens}  # nothing is ever evicted: identical to full attention

    @classmethod
    def small_params(cls) -> dict:
        return {"sinks": 4, "window": 32, "chunk_size": 24}

    def setup(self, model: torch.nn.Module, *, device: str, dtype: str) -> None:
        if hf.uses_sliding_window(model):
            raise Unsupported(
                "streamingllm evicts from plain caches; this model declares sliding-window layers"
            )
        # Our attention builds the one band mask it needs; transformers is told to build none.
        hf.register_attention(ATTENTION, streaming_attention, hf.no_mask)
        hf.set_attention(model, ATTENTION)
        # cos at position 0 is the rope attention factor (1 but for YaRN-like scalings): our extra
        # rotations divide it out. Read once here, not per forward, where it would cost a sync.
        cos_11D, _ = hf.rotary_cos_sin(model, torch.zeros(1, 1, dtype=torch.long, device=device), model.dtype)
        self._rope_factor = float(cos_11D[0, 0, 0])

    def attention_backend(self) -> str:
        return hf.BACKENDS.summary()

    def _chunk(self) -> int:
        return min(self.params.chunk_size, self.params.window)

    def prefill(self, model: torch.nn.Module, input_ids: torch.Tensor) -> Generation:
        p, length = self.params, input_ids.shape[1]
        # Room for the prompt and the next token's slot; decode grows it up to the full ring.
        capacity = min(p.sinks + p.window + 1, length + 1)
        state = StreamState([RingLayer() for _ in range(model.config.num_hidden_layers)], capacity)
        logits = None
        for start in range(0, length, self._chunk()):
            logits = self._forward(model, input_ids[:, start : start + self._chunk()], state)
        return Generation(logits=logits, state=state, next_position=state.seen)

    def decode(self, model: torch.nn.Module, token_ids: torch.Tensor, gen: Generation) -> Generation:
        logits = None
        for i in range(token_ids.shape[1]):  # one token per forward: the in-place path
            logits = self._forward(model, token_ids[:, i : i + 1], gen.state)
        return Generation(logits=logits, state=gen.state, next_position=gen.state.seen)

    def _tables(self, model, positions_N: torch.Tensor, sign: float):
        """The model's RoPE tables at `positions` (attention factor divided out), [1, 1, N, D]."""
        cos, sin = hf.rotary_cos_sin(model, positions_N[None], model.dtype)
        if self._rope_factor != 1.0:
            cos, sin = cos / self._rope_factor, sin / self._rope_factor
        return cos[:, None], sign * sin[:, None]

    def _forward(self, model: torch.nn.Module, ids: torch.Tensor, state: StreamState) -> torch.Tensor:
        """One forward of `ids` (positions seen .. seen+n-1, n <= window) over the ring buffer."""
        p, n, device, start = self.params, ids.shape[1], ids.device, state.seen
        full = p.sinks + p.window + 1
        if start + n > state.capacity and state.capacity < full:
            self._grow(state, min(full, max(start + n, 2 * state.capacity)))
        positions_N = torch.arange(start, start + n, device=device)
        cached = min(start, full)
        cache_mode = p.positions == "cache"
        step = Step(state, p.sinks, p.window, start, n, self._pieces(start, n), cached)
        step.cache_mode = cache_mode
        delta_last = start + n - 1 - p.sinks - p.window  # > 0: the last query is past a full cache
        split = cache_mode and delta_last > 0 and p.sinks > 0
        if n == 1 and split:
            step.sink_cos_11ND, step.sink_sin_11ND = self._tables(
                model, positions_N.new_full((1,), delta_last), 1.0
            )
        elif n > 1 and cached:
            step.split_sinks = split
            lo = p.sinks if split else 0
            # Decided from the arithmetic, not the device: is the ring's oldest key outside the
            # last query's window? Then query j must not see the j oldest ring keys.
            oldest_ring = max(p.sinks, start - p.window - 1)
            if cached > p.sinks and oldest_ring < start + n - 1 - p.window:
                held_C = cached_positions(start, p.sinks, p.window, device)[lo:]
                hidden_NC = (held_C[None, :] >= p.sinks) & (
                    held_C[None, :] < (positions_N - p.window)[:, None]
                )
                band = torch.zeros(n, cached - lo, dtype=model.dtype, device=device)
                step.band_11NC = band.masked_fill_(hidden_NC, float("-inf"))[None, None]
            if split:
                delta_N = (positions_N - p.sinks - p.window).clamp(min=0)
                step.back_cos_11ND, step.back_sin_11ND = self._tables(model, delta_N, -1.0)
        logits = hf.forward_last_logits(model, ids, None, position_ids=positions_N[None], streaming_step=step)
        state.seen += n
        return logits

    def _pieces(self, start: int, n: int) -> list[tuple[slice, int]]:
        """slot_of(start .. start+n-1) as contiguous runs (n <= window: the ring wraps at most once)."""
        s, ring = self.params.sinks, self.params.window + 1
        pieces, i = [], 0
        if start < s:
            i = min(n, s - start)
            pieces.append((slice(0, i), start))
        while i < n:
            offset = (start + i - s) % ring
            run = min(n - i, ring - offset)
            pieces.append((slice(i, i + run), s + offset))
            i += run
        return pieces

    def _grow(self, state: StreamState, capacity: int) -> None:
        """A short prompt's buffer, enlarged during decode (doubling: a few copies in all)."""
        for layer in state.layers:
            if layer.k is not None:
                k = layer.k.new_empty(*layer.k.shape[:2], capacity, layer.k.shape[3])
                v = layer.v.new_empty(*layer.v.shape[:2], capacity, layer.v.shape[3])
                k[:, :, : state.capacity], v[:, :, : state.capacity] = layer.k, layer.v
                layer.k, layer.v = k, v
        state.capacity = capacity

    def kept_positions(self, gen: Generation) -> torch.Tensor:
        """Positions the next token will see besides itself, ascending (for tests and cross-checks)."""
        return kv.sink_window_positions(gen.state.seen, self.params.sinks, self.params.window)

    def kv_cache_bytes(self, gen: Generation) -> int:
        return hf.tensor_bytes([t for layer in gen.state.layers for t in layer.tensors()])

    def estimate(
        self, shape: ModelShape, context_len: int, dtype_bytes: int, device: str = "cuda"
    ) -> MemoryEstimate:
        p = self.params
        weights = memory_model.weights_bytes(shape, dtype_bytes)
        buffer = min(context_len + 1, p.sinks + p.window + 1)
        stored = memory_model.kv_bytes(shape, buffer, dtype_bytes)
        if p.positions == "cache" and p.sinks:
            stored += memory_model.kv_bytes(shape, min(context_len, p.sinks), dtype_bytes) // 2
        chunk = min(self._chunk(), context_len)
        cached = min(context_len - chunk, p.sinks + p.window + 1)  # keys of call (a) in the last chunk
        q = chunk * shape.num_heads * shape.head_dim * dtype_bytes  # one [B, H, chunk, D] tensor
        kv_chunk = chunk * shape.num_kv_heads * shape.head_dim * dtype_bytes
        # Inside attention the layer holds its input and normed copy, q/k/v and their rotated
        # copies, and ours: the outputs of calls (a)-(c), the queries rotated back for (b), the
        # float32 merge (weighted parts and their sum) and the [B, chunk, H, D] result: 7 x q.
        hidden = 2 * chunk * shape.hidden_size * dtype_bytes
        in_attention = hidden + 3 * q + 3 * kv_chunk + (7 * q * 4) // dtype_bytes if cached else 0
        working = max(memory_model.layer_activation_bytes(shape, chunk, dtype_bytes), in_attention)
        # The band mask over the cached slots, one for all layers of a forward, in the model dtype.
        mask = chunk * cached * dtype_bytes if cached > p.sinks else 0
        peak = weights + stored + working + mask + memory_model.logits_bytes(shape)
        return MemoryEstimate(stored_kv_bytes=stored, peak_prefill_bytes=peak, weights_bytes=weights)
