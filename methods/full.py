"""Full attention: the reference every other method is measured against.

One-shot prefill runs the whole prompt through each layer at once (FlashAttention through
flash-attn when importable, else PyTorch SDPA, whose flash kernel takes the causal case). Chunked
prefill feeds `chunk_size` tokens at a time into the cache, as vLLM/SGLang do: each chunk attends
to every earlier key without a mask and to itself causally (bottom-right alignment), with no
[chunk x context] mask and no K/V repeated to the query heads (`hf.bottom_right_causal`: flash
with torch's `causal_lower_right` on CUDA, two fused calls merged by log-sum-exp on CPU).
Activations shrink to one chunk; the stored KV does not.

The cache is preallocated for the prompt (+ `memory_model.DECODE_RESERVE` tokens) and written in
place (`hf.InPlaceLayer`): decode appends without the whole-cache `torch.cat` of transformers'
DynamicCache, which serving engines do not pay either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from segbench import hf, memory_model, prefill
from segbench.method import Generation, MemoryEstimate, Method, register_method
from segbench.models import ModelShape


@dataclass(frozen=True)
class FullParams:
    prefill: Literal["one_shot", "chunked"] = "one_shot"
    chunk_size: int = 4096

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


@register_method("full")
class Full(Method):
    summary = "Dense causal attention over the whole prompt (one-shot or chunked prefill); the reference."
    lowers = ()
    Params = FullParams

    def setup(self, model: torch.nn.Module, *, device: str, dtype: str) -> None:
        implementation, self._backend = hf.full_attention_implementation(device, dtype)
        hf.set_attention(model, implementation)

    def attention_backend(self) -> str:
        if self._backend == "sdpa":
            return hf.BACKENDS.summary()
        return self._backend

    def prefill(self, model: torch.nn.Module, input_ids: torch.Tensor) -> Generation:
        cache = hf.new_cache(model, capacity=input_ids.shape[1])
        if self.params.prefill == "chunked":
            return prefill.chunked(model, input_ids, cache, self.params.chunk_size)
        return prefill.one_shot(model, input_ids, cache)

    def decode(self, model: torch.nn.Module, token_ids: torch.Tensor, gen: Generation) -> Generation:
        return prefill.decode_step(model, token_ids, gen)

    def kv_cache_bytes(self, gen: Generation) -> int:
        return hf.tensor_bytes(hf.cache_tensors(gen.state))

    def estimate(self, shape: ModelShape, context_len: int, dtype_bytes: int, device: str = "cuda") -> MemoryEstimate:
        weights = memory_model.weights_bytes(shape, dtype_bytes)
        kv = memory_model.kv_bytes(shape, context_len, dtype_bytes)
        tokens = min(self.params.chunk_size, context_len) if self.params.prefill == "chunked" else context_len
        # Every layer's KV (preallocated) + one layer's working set over one chunk (or the prompt);
        # the chunk's attention needs no mask and no expanded K/V, so nothing scales with chunk x context.
        working = memory_model.decoder_layer_peak_bytes(shape, tokens, dtype_bytes)
        peak = (weights + kv + memory_model.kv_reserve_bytes(shape, dtype_bytes, device) + working
                + memory_model.logits_bytes(shape))
        return MemoryEstimate(stored_kv_bytes=kv, peak_prefill_bytes=peak, weights_bytes=weights)
