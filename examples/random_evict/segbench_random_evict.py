"""random_evict: dense prefill, then keep `budget` random earlier positions per KV head + a window.

An example of a segbench method written outside segbench. It is a floor for eviction policies:
a learned or attention-guided policy (SnapKV, H2O) that cannot beat random selection at the same
budget is not selecting anything. Everything it needs comes from segbench's public pieces:
the Method interface and registry, the prefill loops, the cache helpers and the memory arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segbench import hf, memory_model, prefill
from segbench.kv import gather_positions
from segbench.method import Generation, MemoryEstimate, Method, register_method
from segbench.models import ModelShape


@dataclass(frozen=True)
class RandomEvictParams:
    budget: int = 2016  # random earlier positions kept per KV head
    window: int = 32  # the most recent positions, always kept
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget < 0 or self.window < 0:
            raise ValueError("budget and window must be >= 0")


@register_method("random_evict")
class RandomEvict(Method):
    summary = "Example plugin: dense prefill, then a random budget of KV per head plus a recent window."
    lowers = ("stored_kv",)
    Params = RandomEvictParams
    consistency_exempt = "evicts after prefill by design: decode sees the thinned cache, a longer prefill the dense one"

    @classmethod
    def reference_params(cls, total_tokens: int) -> dict:
        return {"budget": total_tokens}  # nothing is evicted

    @classmethod
    def small_params(cls) -> dict:
        return {"budget": 40, "window": 8}

    def setup(self, model: torch.nn.Module, *, device: str, dtype: str) -> None:
        hf.set_attention(model, "segbench_sdpa")

    def attention_backend(self) -> str:
        return hf.BACKENDS.summary()

    def _kept(self, length: int) -> int:
        return min(length, self.params.budget + self.params.window)

    def prefill(self, model: torch.nn.Module, input_ids: torch.Tensor) -> Generation:
        cache = hf.new_cache(model)
        gen = prefill.one_shot(model, input_ids, cache)
        length = input_ids.shape[1]
        if self._kept(length) == length:
            return gen
        g = torch.Generator().manual_seed(self.params.seed)
        earlier = length - self.params.window
        for layer in range(len(cache.layers)):
            keys_BHLD, values_BHLD = hf.get_cache_layer(cache, layer)
            b, h = keys_BHLD.shape[:2]
            # An independent random subset per KV head, in prompt order, then the window.
            picks_BHK = torch.rand(b, h, earlier, generator=g).argsort(-1)[..., : self.params.budget].sort(-1).values
            window_BHW = torch.arange(earlier, length).expand(b, h, -1)
            index_BHK = torch.cat([picks_BHK, window_BHW], dim=-1).to(keys_BHLD.device)
            hf.set_cache_layer(cache, layer, gather_positions(keys_BHLD, index_BHK), gather_positions(values_BHLD, index_BHK))
        return gen

    def decode(self, model: torch.nn.Module, token_ids: torch.Tensor, gen: Generation) -> Generation:
        # The cache is shorter than the sequence: give the true position, not the cache length.
        position_ids = torch.arange(gen.next_position, gen.next_position + token_ids.shape[1], device=token_ids.device)[None]
        logits = hf.forward_last_logits(model, token_ids, gen.state, position_ids=position_ids)
        return Generation(logits=logits, state=gen.state, next_position=gen.next_position + token_ids.shape[1])

    def kv_cache_bytes(self, gen: Generation) -> int:
        return hf.tensor_bytes(hf.cache_tensors(gen.state))

    def estimate(self, shape: ModelShape, context_len: int, dtype_bytes: int, device: str = "cuda") -> MemoryEstimate:
        weights = memory_model.weights_bytes(shape, dtype_bytes)
        stored = memory_model.kv_bytes(shape, self._kept(context_len), dtype_bytes)
        # Dense one-shot prefill holds every position's KV before the eviction: the peak is full's.
        peak = (weights + memory_model.kv_bytes(shape, context_len, dtype_bytes)
                + memory_model.layer_activation_bytes(shape, context_len, dtype_bytes) + memory_model.logits_bytes(shape))
        return MemoryEstimate(stored_kv_bytes=stored, peak_prefill_bytes=peak, weights_bytes=weights)
