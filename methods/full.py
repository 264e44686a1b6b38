"""Full attention: the reference every other method is measured against.

One-shot prefill runs the whole prompt through each layer at once (FlashAttention through
flash-attn when importable, else PyTorch SDPA, whose flash kernel takes the causal case). Chunked
prefill feeds `chunk_size` tokens at a time into a growing cache: activations shrink to one chunk,
the stored KV does not, and each chunk needs an explicit causal mask against earlier KV.
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
        if self.params.prefill == "chunked":
            chunk = min(self.params.chunk_size, context_len)
            working = (
                memory_model.layer_activation_bytes(shape, chunk, dtype_bytes)
                + memory_model.mask_bytes(chunk, context_len, dtype_bytes)
                + memory_model.expanded_kv_bytes(shape, context_len, dtype_bytes, device)
            )
        else:
            working = memory_model.layer_activation_bytes(shape, context_len, dtype_bytes)
        peak = weights + kv + working + memory_model.logits_bytes(shape)
        return MemoryEstimate(stored_kv_bytes=kv, peak_prefill_bytes=peak, weights_bytes=weights)
