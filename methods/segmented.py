"""Segmented execution, training-inference consistent (arXiv 2605.11744).

The sequence runs in segments of `segment` tokens (S), one forward per segment (decode tokens
extend the open segment; at S tokens it closes and the next opens). Positions are renumbered inside
each window: the forward runs with segment-local position_ids and visible keys are rotated to
-V..-1 (RoPE is relative, so this is the window numbered 0..V+S-1, exactly).

What each head sees, and the choices behind it (the paper states the roles, not S, M, R, k):
- Local heads: [tail; segment], the tail being the last `tail` tokens (M) of the closed segments.
- Long-range heads (`long_range_heads` of the `long_range_layers`): [prefix; tail; segment], the
  prefix being `topk` blocks of `block` tokens (R = topk * block) retrieved from a read-only pool.
  The paper gives them [prefix; segment]; we add the tail by default (`long_range_tail=True`)
  because otherwise the segment's first tokens would see nothing of the immediately preceding
  tokens in exactly the layers meant to reach furthest. `long_range_tail=False` is the paper's.
- Which query selects, and when: the LAST query of the PREVIOUS segment, when that segment closes
  (pre-RoPE, per KV head with its GQA group's softmax-averaged votes, block score = max over its
  tokens: `segments.select_blocks`). The choice is then fixed for the whole next segment: every
  prefill token and every decode token of it sees the same blocks. This is what causality allows:
  a segment's own last query would let earlier tokens see blocks chosen by a later token, and
  decode (re-picking per token) would differ from prefill. The first segment retrieves nothing.
- Pool contents: every closed segment (the just-closed one included), pre-RoPE, detached. Blocks
  that overlap the long-range heads' own tail are not candidates (they are already visible, and
  would be seen twice); with `long_range_tail=False` every pool block is. Blocks are cut from the
  start of the sequence, so a tail that is not a multiple of `block` leaves the straddling block's
  tokens outside the tail unretrievable: choose M as a multiple of the block.
- Gradient rule (training, `segbench/train/forward.py`, runs this same code): a segment's loss
  reaches only the KV carried from the immediately preceding segment, the tail; tail tokens of older
  segments are detached when a segment closes, the pool and the prefix gathered from it always are
  (the paper's abstract: the tail is the only path of cross-segment gradient).

Storage (`segments.HeadGroup`): the open segment's window is one preallocated buffer per head group
[B, H, R + T + S, D] = [prefix | tail | segment]: a decode token is written in place and attention
reads a view, so no step copies the cache (the pool grows by one segment per close during decode,
a copy once per S tokens). Tail keys are kept rotated to -T..-1 and moved by -S at a close (one
rotation per close, none per token); the pool is kept pre-RoPE (segment keys un-rotated once on
closing: no forked model code, no hook) because retrieved blocks get new positions every segment.
Stored KV counts the buffers as allocated, the empty part of the open segment included.

Defaults, for the paper's LLaMA-2-7B-32K/80K class at 32K-128K:
- segment=4096: one segment's activations stay ~1/32 of a 128K one-shot's, and the longest
  window (R + M + S = 8K for long-range heads) stays well inside the 32K the models were trained on.
- tail=2048 and topk=32 x block=64 (R=2048): local and long-range windows of similar length;
  M is what every local layer stores, so it is the stored-KV knob and is kept at S/2.
- block=64: the Triton kernel's key tile in bf16 (a block is a whole tile), and fine enough that a
  one-token needle brings 63 neighbours, not thousands.
- long_range_layers="auto": the paper's 6, 8, 11, 18 of 32 scaled to the model's depth
  (`segments.scale_layers`); an explicit list must lie inside the model.
- long_range_heads="all": the paper names layers, not heads; a list of KV-head indices makes the
  other heads of those layers local (they see only the tail).
- pool_device="same"; "cpu" keeps the pool in host memory and copies only the R picked tokens over.
- kernel="auto": the Triton kernel on CUDA where it can run, PyTorch SDPA otherwise.
Batch > 1 is computed per row, but padding masks are not supported (the harness runs batch 1).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch

from segbench import hf, memory_model, segments
from segbench.method import Generation, MemoryEstimate, Method, Unsupported, register_method
from segbench.models import ModelShape

ATTENTION = "segbench_segmented"
ROPE_FAMILIES = ("llama", "mistral", "qwen2")  # rotate_half RoPE over the whole head, via model.model.rotary_emb


@dataclass(frozen=True)
class SegmentedParams:
    segment: int = 4096
    tail: int = 2048
    topk: int = 32
    block: int = 64
    long_range_layers: Literal["auto"] | tuple[int, ...] = "auto"
    long_range_heads: Literal["all"] | tuple[int, ...] = "all"
    long_range_tail: bool = True
    pool_device: Literal["same", "cpu"] = "same"
    kernel: Literal["auto", "torch", "triton"] = "auto"

    def __post_init__(self) -> None:
        if self.segment < 1 or self.block < 1 or self.tail < 0 or self.topk < 0:
            raise ValueError("segment and block must be >= 1, tail and topk >= 0")
        if self.segment % self.block:
            raise ValueError(f"segment ({self.segment}) must be a multiple of block ({self.block}): the pool is cut into whole blocks")
        for name in ("long_range_layers", "long_range_heads"):
            value = getattr(self, name)
            if isinstance(value, tuple) and (min(value, default=0) < 0 or len(set(value)) != len(value)):
                raise ValueError(f"{name} must be distinct indices >= 0, got {list(value)}")


def _window(module, q_BHLD, k_BKWD, v_BKWD, n_vis: int, scaling: float, *, kernel: str) -> torch.Tensor:
    """[B, Lq, Hq, D] of one window [visible; segment]. THE one place where the CUDA path runs the Triton kernel.

    The kernel gets views of the window buffer (visible part, segment part): nothing is copied."""
    if _use_kernel(kernel, q_BHLD):
        from segbench.kernels.segmented_attention import segmented_attention

        k_vis, v_vis = (k_BKWD[:, :, :n_vis], v_BKWD[:, :, :n_vis]) if n_vis else (None, None)
        out_BHLD = segmented_attention(q_BHLD, k_BKWD[:, :, n_vis:], v_BKWD[:, :, n_vis:], k_vis, v_vis, sm_scale=scaling)
        hf.BACKENDS.add("triton")
        return out_BHLD.transpose(1, 2)
    return segments.window_attention(module, q_BHLD, k_BKWD, v_BKWD, n_vis, scaling)


def _use_kernel(choice: str, q_BHLD: torch.Tensor) -> bool:
    """auto: on CUDA where Triton runs this head_dim; triton: always, or a clear error; torch: never."""
    if choice == "torch" or (choice == "auto" and not q_BHLD.is_cuda):
        return False
    # Imported here, not at the top: the first import fixes Triton's interpreter mode for the process.
    from segbench.kernels import _triton

    head_dim = q_BHLD.shape[-1]
    fits = _triton.can_run(q_BHLD.device) and head_dim >= 16 and head_dim & (head_dim - 1) == 0
    if choice == "triton" and not fits:
        raise RuntimeError(f"kernel='triton' cannot run here (device {q_BHLD.device}, head_dim {head_dim})")
    return fits


def segmented_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function contract; the state travels as the forward kwarg `segbench_state`."""
    state: segments.SegmentedState | None = kwargs.get("segbench_state")
    if state is None:
        raise RuntimeError(f"attention {ATTENTION!r} needs segbench_state=...: run the model through Segmented")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return state.layers[module.layer_idx].attend(module, query, key, value, scale, state).contiguous(), None


@register_method("segmented")
class Segmented(Method):
    summary = "Segments of S tokens; local heads see a carried KV tail, long-range heads a top-k block prefix of a read-only pool."
    lowers = ("peak_prefill", "stored_kv")
    Params = SegmentedParams

    @classmethod
    def reference_params(cls, total_tokens: int) -> dict:
        block = SegmentedParams.block
        return {"segment": -(-total_tokens // block) * block, "tail": 0, "topk": 0}  # one segment: full causal

    @classmethod
    def small_params(cls) -> dict:
        # 160 prompt tokens = 54 + 54 + 52: two closes in prefill (tail and pool in use), then the
        # second decode token closes the third segment and six more run in a fresh one.
        return {"segment": 54, "tail": 16, "topk": 2, "block": 6, "long_range_layers": [1], "long_range_heads": [0]}

    def _plan(self, model_type: str, num_layers: int, n_kv_heads: int) -> tuple[tuple[int, ...], list[int]]:
        """(long-range layers, long-range KV heads) for this model, or Unsupported with the reason."""
        if model_type not in ROPE_FAMILIES:
            raise Unsupported(f"segmented re-rotates keys with rotate_half RoPE; supported: {', '.join(ROPE_FAMILIES)}")
        p = self.params
        layers = segments.scale_layers(num_layers) if p.long_range_layers == "auto" else p.long_range_layers
        heads = list(range(n_kv_heads)) if p.long_range_heads == "all" else sorted(p.long_range_heads)
        if max(layers, default=0) >= num_layers:
            raise Unsupported(f"long_range_layers {list(layers)} outside the model's {num_layers} layers (0..{num_layers - 1})")
        if max(heads, default=0) >= n_kv_heads:
            raise Unsupported(f"long_range_heads {heads} outside the model's {n_kv_heads} KV heads")
        return tuple(layers), heads

    def check(self, shape: ModelShape, context_len: int) -> None:
        self._plan(shape.model_type, shape.num_layers, shape.num_kv_heads)

    def setup(self, model: torch.nn.Module, *, device: str, dtype: str) -> None:
        cfg = model.config
        self._layers, self._heads = self._plan(cfg.model_type, cfg.num_hidden_layers, cfg.num_key_value_heads)
        if hf.uses_sliding_window(model):
            raise Unsupported("segmented builds its own windows; a model with sliding-window layers does not compose")
        self._pool_device = "cpu" if self.params.pool_device == "cpu" else device
        hf.register_attention(ATTENTION, segmented_attention_forward, hf.no_mask)  # our windows, not HF's mask
        hf.set_attention(model, ATTENTION)

    def attention_backend(self) -> str:
        return hf.BACKENDS.summary()

    def _run(self, model: torch.nn.Module, ids: torch.Tensor, state: segments.SegmentedState) -> torch.Tensor:
        """Forward `ids`, split so that no forward crosses a segment boundary; logits of the last token."""
        logits, start = None, 0
        while start < ids.shape[1]:
            n = min(self.params.segment - state.seg_len, ids.shape[1] - start)
            positions = torch.arange(state.seg_len, state.seg_len + n, device=ids.device)[None]
            logits = hf.forward_last_logits(model, ids[:, start : start + n], None, position_ids=positions, segbench_state=state)
            state.seg_len = (state.seg_len + n) % self.params.segment
            start += n
        return logits

    def prefill(self, model: torch.nn.Module, input_ids: torch.Tensor) -> Generation:
        n_kv = model.config.num_key_value_heads
        layers = [
            segments.LayerKV(n_kv, self._heads if i in self._layers else [], self._pool_device, self.params.long_range_tail)
            for i in range(model.config.num_hidden_layers)
        ]
        length = input_ids.shape[1]
        window = functools.partial(_window, kernel=self.params.kernel)
        state = segments.SegmentedState(self.params, segments.Rope(model), layers, window)
        state.reserve = (length // self.params.segment) * self.params.segment
        logits = self._run(model, input_ids, state)
        state.reserve = 0  # decode closes grow the pool by one segment each
        return Generation(logits=logits, state=state, next_position=length)

    def decode(self, model: torch.nn.Module, token_ids: torch.Tensor, gen: Generation) -> Generation:
        logits = self._run(model, token_ids, gen.state)
        return Generation(logits=logits, state=gen.state, next_position=gen.next_position + token_ids.shape[1])

    def kv_cache_bytes(self, gen: Generation) -> int:
        return hf.tensor_bytes([t for layer in gen.state.layers for t in layer.tensors()])

    def _stored_tokens(self, closed: int, open_segment: bool, n_kv: int, lr_heads: list[int], long_range: bool) -> int:
        """KV-head tokens one layer stores (pool excluded) after `closed` tokens closed, as `segments` allocates."""
        p = self.params
        groups = []  # (heads, keeps tail, retrieves), as LayerKV builds them
        if not long_range or len(lr_heads) < n_kv:
            groups.append((n_kv - len(lr_heads) if long_range else n_kv, True, False))
        if long_range and lr_heads:
            groups.append((len(lr_heads), p.long_range_tail, True))
        total = 0
        for heads, keeps_tail, retrieves in groups:
            tail = min(p.tail, closed) if keeps_tail else 0
            n_blocks = (closed - tail) // p.block if retrieves and closed and p.topk else 0
            prefix = min(p.topk, max(0, n_blocks)) * p.block
            total += heads * (prefix + tail + (p.segment if open_segment else 0))
        return total

    @staticmethod
    def _activation_bytes(shape: ModelShape, tokens: int, dtype_bytes: int) -> int:
        """One decoder layer's forward over `tokens`, at its MLP (measured to be where the peak falls).

        The MLP's three [tokens, I] products, and four [tokens, H]: the residual, its normed copy,
        the model's input embeddings (referenced through the whole forward) and the residual add's
        output; the RoPE tables (cos, sin). memory_model.layer_activation_bytes counts 2 H and so
        undershoots the measured peak by ~2 H per token (also seen on full attention).
        """
        return tokens * (dtype_bytes * (4 * shape.hidden_size + 3 * shape.intermediate_size) + 2 * shape.head_dim * 4)

    def estimate(self, shape: ModelShape, context_len: int, dtype_bytes: int, device: str = "cuda") -> MemoryEstimate:
        p = self.params
        lr_layers, lr_heads = self._plan(shape.model_type, shape.num_layers, shape.num_kv_heads)
        n_kv, n_lr = shape.num_kv_heads, len(lr_heads)
        token = 2 * shape.head_dim * dtype_bytes  # K and V of one token in one KV head
        closed = (context_len // p.segment) * p.segment  # pool tokens (reserved exactly at the first close)
        is_open = context_len > closed
        pool = len(lr_layers) * token * n_lr * closed
        stored = pool + token * sum(
            self._stored_tokens(closed, is_open, n_kv, lr_heads, i in lr_layers) for i in range(shape.num_layers))

        # Peak prefill = weights + the pool (reserved in full at the first close; off the device with
        # pool_device="cpu") + every layer's visible part (prefix + tail) + open segment buffers +
        # the working set of one layer's forward. Measured on the CPU miniature (tiny-llama, fp32,
        # 8K-32K, defaults), the peak falls in the MLP of a full segment's forward, not in attention:
        # a 4x smaller attention mask chunk left it unchanged (67.6 vs 67.4 MiB), so the attention-phase
        # terms (log-sum-exp merge, close-time rotations, selection scores) enter as a max.
        seg = min(p.segment, context_len)
        seen = ((context_len - 1) // p.segment) * p.segment  # closed before the last segment opened
        per_layer = [(i in lr_layers) for i in range(shape.num_layers)]
        visible = token * sum(self._stored_tokens(seen, False, n_kv, lr_heads, lr) for lr in per_layer)
        seg_buffer = token * n_kv * p.segment  # one layer's open segment part
        current = context_len - seen  # tokens of the last forward
        # A full segment closes in each layer as the forward leaves it: one open buffer at a time.
        # A partial last segment stays open in every layer, with a smaller forward.
        full_seg = seg_buffer + self._activation_bytes(shape, seg, dtype_bytes)
        partial = shape.num_layers * seg_buffer + self._activation_bytes(shape, current, dtype_bytes)
        working = max(full_seg, partial if current < p.segment else 0)
        n_win = max(self._stored_tokens(seen, True, 1, [0] if lr and n_lr else [], lr) for lr in per_layer)
        n_vis = n_win - p.segment  # the longest visible part one head sees
        has_triton = importlib.util.find_spec("triton") is not None
        kernel = device == "cuda" and p.kernel != "torch" and has_triton  # the kernel needs no mask
        # Attention phase: hf.bottom_right_causal's two float32 partial outputs and their merge (no
        # mask; none at all in the kernel); at a close the float32 temporaries rotating a segment's
        # keys and the selection's scores over the pool.
        mask = 0 if kernel or n_vis == 0 else 3 * seg * shape.num_heads * shape.head_dim * 4
        rope = 3 * n_kv * seg * shape.head_dim * 4
        scores = 3 * n_lr * (shape.num_heads // n_kv) * seen * 4 if lr_layers and p.topk else 0
        attention_phase = seg_buffer + mask + rope + scores + seg * 4 * dtype_bytes * shape.hidden_size
        off_device = pool if p.pool_device == "cpu" and device != "cpu" else 0
        weights = memory_model.weights_bytes(shape, dtype_bytes)
        peak = (weights + pool - off_device + visible + max(working, attention_phase)
                + memory_model.logits_bytes(shape))
        return MemoryEstimate(stored_kv_bytes=stored, peak_prefill_bytes=peak, weights_bytes=weights)
