"""Every call into transformers lives here, so one file pins and tests the supported range.

Methods hook into models only through what this module offers: attention functions registered
with transformers' AttentionInterface *and* AttentionMaskInterface, the Cache classes, and forward
keyword arguments. No model code is forked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import transformers
from packaging.version import Version

from segbench import memory_model
from segbench.errors import UserError
from segbench.models import config_values, fill_random, is_local_path, params_on_meta, resolve_model

SUPPORTED_TRANSFORMERS = (">=5.17", "<6")


def check_transformers_version() -> None:
    v = Version(transformers.__version__)
    if not (Version("5.17") <= v < Version("6")):
        raise UserError(
            f"transformers {transformers.__version__} is outside the supported range "
            f"{','.join(SUPPORTED_TRANSFORMERS)}; install e.g. `pip install 'transformers>=5.17,<6'`"
        )


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def flash_attn_version() -> str:
    try:
        import flash_attn  # noqa: F401

        return getattr(flash_attn, "__version__", "unknown")
    except Exception:
        return ""


def build_model(
    model: str,
    *,
    dtype: str,
    device: str,
    overrides: dict | None = None,
    seed: int = 0,
    attn_implementation: str = "segbench_sdpa",
) -> torch.nn.Module:
    """A preset with random weights built directly on `device`, or a local checkpoint.

    Random weights are allocated once, on the target device, and filled there from a generator seeded
    with ``seed`` (no host detour, no per-module init): an 8B preset builds in seconds on a GPU.
    """
    check_transformers_version()
    register_default_attention()
    torch_dtype = TORCH_DTYPES[dtype]
    model = resolve_model(model)
    if is_local_path(model):
        # Straight onto the device where accelerate can place it; else load, then move.
        placement = {"device_map": device} if _has_accelerate() else {}
        m = transformers.AutoModelForCausalLM.from_pretrained(
            model,
            dtype=torch_dtype,
            local_files_only=True,
            trust_remote_code=False,
            attn_implementation=attn_implementation,
            **placement,
        )
        if not placement:
            m.to(device)
        for k, v in (overrides or {}).items():
            setattr(m.config, k, v)
    else:
        values = config_values(model, overrides)
        model_type = values.pop("model_type")
        config = transformers.AutoConfig.for_model(model_type, **values)
        # Parameters on meta during construction (no allocation, no per-module init), then one
        # seeded on-device fill each (segbench.models.fill_random): an 8B preset in seconds.
        with params_on_meta():
            m = transformers.AutoModelForCausalLM.from_config(
                config, dtype=torch_dtype, attn_implementation=attn_implementation, trust_remote_code=False
            )
        fill_random(m, device, seed, getattr(config, "initializer_range", None) or 0.02)
    m.eval()
    m.requires_grad_(False)
    return m


# --------------------------------------------------------------------------------------------
# Attention functions


def register_attention(name: str, fn: Callable, mask_fn: Callable | None = None) -> None:
    """Register an attention function under `name` together with its mask function.

    Without a mask function transformers passes attention_mask=None to a custom attention name,
    and chunked prefill silently loses its causal mask (max logit error 0.4 on a tiny Llama).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, mask_fn or sdpa_mask)


def set_attention(model: torch.nn.Module, name: str) -> None:
    model.set_attn_implementation(name)


class BackendLog:
    """Which SDPA kernel actually ran: the adapters' rows report it, not an assumption."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.used: set[str] = set()

    def add(self, name: str) -> None:
        with self._lock:
            self.used.add(name)

    def reset(self) -> None:
        with self._lock:
            self.used.clear()

    def summary(self) -> str:
        return "+".join(sorted(self.used)) or "none"


BACKENDS = BackendLog()

# PyTorch's own priority order; we walk it ourselves so that we know which one ran.
_SDPA_ORDER = ("flash", "efficient", "math")
_failed_once: dict[tuple, set[str]] = {}


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def sdpa_call(query, key, value, *, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """F.scaled_dot_product_attention, trying PyTorch's backends in its own order and logging the winner."""
    from torch.nn.attention import sdpa_kernel

    signature = (query.device.type, query.dtype, attn_mask is None, is_causal, enable_gqa, query.shape[-1])
    failed = _failed_once.setdefault(signature, set())
    last_error: Exception | None = None
    for name in _SDPA_ORDER:
        if name in failed or (name == "efficient" and query.device.type != "cuda"):
            continue
        try:
            with sdpa_kernel([_sdpa_backend(name)]):
                out = torch.nn.functional.scaled_dot_product_attention(
                    query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
                )
            BACKENDS.add(f"sdpa:{name}")
            return out
        except RuntimeError as e:  # "No available kernel" for this backend and these inputs
            failed.add(name)
            last_error = e
    raise last_error  # type: ignore[misc]


def segbench_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-function contract over `sdpa_call`: q/k/v [B, H, L, D] in, [B, L, H, D] out.

    Without a mask and with several queries, attention is causal and bottom-right aligned: the
    queries are the last `q_len` keys. A square call (one-shot prefill) takes SDPA's is_causal
    (flash); a chunk after earlier KV takes `bottom_right_causal`, which builds no [chunk x
    context] mask and never repeats K/V to the query heads. A given mask is used as is (with
    K/V expanded on CUDA, where masked kernels need it, as transformers does). One query without
    a mask attends to every key (decode).
    """
    q_len, k_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(q_len > 1 and attention_mask is None and causal)
    if causal and k_len > q_len:
        return bottom_right_causal(query, key, value, scaling), None
    groups = query.shape[1] // key.shape[1]
    enable_gqa = groups > 1 and (attention_mask is None or query.device.type == "cpu")
    if groups > 1 and not enable_gqa:  # CUDA kernels with a mask need expanded K/V, as transformers does
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    out = sdpa_call(query, key, value, attn_mask=attention_mask, is_causal=causal, scale=scaling, enable_gqa=enable_gqa)
    return out.transpose(1, 2).contiguous(), None


# --------------------------------------------------------------------------------------------
# Chunked prefill without a [chunk x context] mask


def bottom_right_causal(query, key, value, scale: float | None = None) -> torch.Tensor:
    """Causal attention of the last `Lq` of `Lk` positions, bottom-right aligned: [B, Lq, Hq, D].

    q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D] with Lq <= Lk: query row r is position Lk - Lq + r and
    sees keys 0 .. Lk - Lq + r. This is what vLLM/SGLang chunked prefill computes; nothing of
    size Lq x Lk is materialised and K/V stay at the KV heads:

    * CUDA where PyTorch's flash kernel runs (fp16/bf16): SDPA with torch's `causal_lower_right`
      bias, which calls the flash kernel with causal=True (lower-right when Lq < Lk; GQA native).
    * otherwise (CPU; CUDA in fp32): two mask-free calls merged by their log-sum-exp, "every
      earlier key, no mask" and "the chunk itself, causal" (square, so top-left = bottom-right).
      The earlier part folds each KV group's query heads into the query axis ([B, Hkv, G*Lq, D]):
      unmasked rows are independent, so GQA needs no K/V expansion there.
    """
    if scale is None:
        scale = query.shape[-1] ** -0.5
    n_q, n_k = query.shape[2], key.shape[2]
    if n_q == n_k:
        out = sdpa_call(query, key, value, is_causal=True, scale=scale, enable_gqa=query.shape[1] != key.shape[1])
        return out.transpose(1, 2).contiguous()
    if query.device.type == "cuda" and _lower_right_flash_ok(query, key, value):
        from torch.nn.attention.bias import causal_lower_right

        try:
            out = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=causal_lower_right(n_q, n_k), scale=scale,
                enable_gqa=query.shape[1] != key.shape[1],
            )
            BACKENDS.add("sdpa:flash_lower_right")
            return out.transpose(1, 2).contiguous()
        except (RuntimeError, TypeError, ValueError):  # a torch whose bias path refuses GQA: merge below
            pass
    prefix = n_k - n_q
    earlier = _folded_unmasked_lse(query, key[:, :, :prefix], value[:, :, :prefix], scale)
    chunk = attention_lse(query, key[:, :, prefix:], value[:, :, prefix:], None, True, scale)
    return merge_lse([earlier, chunk]).transpose(1, 2).contiguous()


def _lower_right_flash_ok(query, key, value) -> bool:
    try:
        from torch.backends.cuda import SDPAParams, can_use_flash_attention

        return bool(can_use_flash_attention(SDPAParams(query, key, value, None, 0.0, False, query.shape[1] != key.shape[1])))
    except Exception:  # an older signature or a missing backend: take the merge path
        return False


def _folded_unmasked_lse(query, key, value, scale):
    """Unmasked attention with each KV group's query heads folded into the query axis: (out, lse)."""
    batch, heads, n_q, dim = query.shape
    kv_heads = key.shape[1]
    q_fold = query.reshape(batch, kv_heads, (heads // kv_heads) * n_q, dim)
    out, lse = attention_lse(q_fold, key, value, None, False, scale)
    return out.reshape(batch, heads, n_q, dim), lse.reshape(batch, heads, n_q)


def attention_lse(q_BHND, k_BKLD, v_BKLD, bias_11NL, causal: bool, scale: float):
    """softmax(q k^T * scale + bias) v and its log-sum-exp: ([B, H, N, D], float32 [B, H, N]).

    One fused call that returns both, for attention split over disjoint key sets and put back
    together by `merge_lse` (chunked prefill's earlier-KV / chunk split, StreamingLLM's ring /
    sinks / chunk). CPU: the flash kernel, GQA native (K/V expanded only on a torch whose op lacks
    it). CUDA: the memory-efficient kernel, K/V expanded (these are chunk- or cache-sized), the bias
    stored with 16-aligned rows as that kernel requires.
    """
    groups = q_BHND.shape[1] // k_BKLD.shape[1]
    if q_BHND.device.type == "cpu":
        try:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q_BHND, k_BKLD, v_BKLD, 0.0, causal, attn_mask=bias_11NL, scale=scale
            )[:2]
        except RuntimeError:  # a torch without native GQA in this op
            k_BKLD, v_BKLD = k_BKLD.repeat_interleave(groups, dim=1), v_BKLD.repeat_interleave(groups, dim=1)
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q_BHND, k_BKLD, v_BKLD, 0.0, causal, attn_mask=bias_11NL, scale=scale
            )[:2]
        BACKENDS.add("sdpa:flash_cpu_lse_merge")
        return out, lse.float()
    if groups > 1:
        k_BKLD, v_BKLD = k_BKLD.repeat_interleave(groups, dim=1), v_BKLD.repeat_interleave(groups, dim=1)
    bias = None
    if bias_11NL is not None:
        b, h, n, length = q_BHND.shape[0], q_BHND.shape[1], bias_11NL.shape[2], bias_11NL.shape[3]
        padded = bias_11NL.new_zeros(n, -(-length // 16) * 16)
        padded[:, :length] = bias_11NL[0, 0]
        bias = padded[:, :length].expand(b, h, n, length)  # broadcast over batch and heads is free
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        q_BHND, k_BKLD, v_BKLD, bias, True, 0.0, causal, scale=scale
    )[:2]
    BACKENDS.add("sdpa:efficient_lse_merge")
    return out, lse[..., : q_BHND.shape[2]].float()


def merge_lse(parts) -> torch.Tensor:
    """Attention over the union of disjoint key sets, from each set's (output, log-sum-exp):
    weights softmax over the parts' lse, in float32, back to the outputs' dtype."""
    weights_PBHN = torch.stack([lse for _, lse in parts]).softmax(dim=0)
    out = sum(o.float() * w[..., None] for (o, _), w in zip(parts, weights_PBHN, strict=True))
    return out.to(parts[0][0].dtype)


_registered = False


def register_default_attention() -> None:
    global _registered
    if not _registered:
        # No transformers mask: segbench_sdpa_forward derives causality from the shapes (batch 1,
        # no padding in this harness), so a chunk never gets a [chunk x context] mask.
        register_attention("segbench_sdpa", segbench_sdpa_forward, no_mask)
        _registered = True


def full_attention_implementation(device: str, dtype: str) -> tuple[str, str]:
    """(attn_implementation, backend label) for full attention: flash-attn where it can run, else SDPA."""
    if device == "cuda" and dtype in ("bfloat16", "float16") and flash_attn_version():
        return "flash_attention_2", "flash_attn"
    return "segbench_sdpa", "sdpa"


# --------------------------------------------------------------------------------------------
# Forward and cache


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward keyword that takes the cache: `cache` where the installed transformers has it
    (5.2x deprecates `past_key_values` with a FutureWarning per call, removal in 5.40), else
    `past_key_values` (5.17 on the GPU image). Read from the signature, once per model class."""
    cls = type(model)
    if cls not in _CACHE_KWARG:
        import inspect

        params = inspect.signature(cls.forward).parameters
        _CACHE_KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[cls]


_CACHE_KWARG: dict[type, str] = {}


def forward_last_logits(model: torch.nn.Module, input_ids: torch.Tensor, cache=None, **kwargs) -> torch.Tensor:
    """Logits of the last position only, [B, vocab].

    `logits_to_keep=1` keeps the LM head from materialising [B, L, vocab] (31 GiB in fp32 for
    Llama-3.1-8B at 128K). The older `num_logits_to_keep` is silently ignored by transformers 5.
    """
    kwargs[cache_kwarg(model)] = cache
    out = model(input_ids=input_ids, use_cache=cache is not None, logits_to_keep=1, **kwargs)
    return out.logits[:, -1, :]


def cache_tensors(cache) -> list[torch.Tensor]:
    """Every tensor a transformers Cache holds (keys and values of each layer)."""
    tensors = []
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                tensors.append(t)
    return tensors


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(model: torch.nn.Module) -> int:
    return tensor_bytes(list(model.parameters()) + list(model.buffers()))


def versions() -> dict:
    return {"transformers": transformers.__version__, "flash_attn": flash_attn_version()}


# --------------------------------------------------------------------------------------------
# In-place caches: preallocated, written in place, no whole-cache copy per decode step

# Tokens of headroom a layer allocates beyond what it was asked to hold, so decode writes in place;
# past it a layer grows by at least 1/8 (amortised: one copy per thousands of tokens, not per token).
DECODE_RESERVE = memory_model.DECODE_RESERVE


class InPlaceLayer(transformers.cache_utils.DynamicLayer):
    """A full-attention cache layer over a preallocated buffer, written in place.

    transformers' DynamicLayer `torch.cat`s the whole layer on every update (at 128K on
    Llama-3.1-8B ~32 GiB of copies per decode token); its StaticLayer hands attention the whole
    buffer, padding included. This layer writes new keys into its buffer [B, H, capacity, D] and
    returns views of the filled part, so attention sees exactly the stored tokens and no mask is
    needed. `keys` / `values` are those views (what `cache_tensors` and the stored-KV bytes count);
    the buffer is allocated at the first update with `capacity` tokens (the prompt length where
    the prefill knows it) plus DECODE_RESERVE, per layer, lazily: a layer that is compacted right
    after its own forward (SnapKV) never coexists at full size with the next layer's buffer.
    """

    is_croppable = False

    def __init__(self, capacity: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.capacity = capacity
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def _reserve(self, needed: int, like_k: torch.Tensor, like_v: torch.Tensor) -> None:
        have = 0 if self._k is None else self._k.shape[-2]
        if needed <= have:
            return
        size = max(needed + DECODE_RESERVE, self.capacity, have + have // 8)
        k = like_k.new_empty(*like_k.shape[:-2], size, like_k.shape[-1])
        v = like_v.new_empty(*like_v.shape[:-2], size, like_v.shape[-1])
        if self.length:
            k[:, :, : self.length].copy_(self._k[:, :, : self.length])
            v[:, :, : self.length].copy_(self._v[:, :, : self.length])
        self._k, self._v = k, v

    def _expose(self) -> None:
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self._reserve(self.length + n, key_states, value_states)
        self._k[:, :, self.length : self.length + n].copy_(key_states)
        self._v[:, :, self.length : self.length + n].copy_(value_states)
        self.length += n
        self._expose()
        return self.keys, self.values

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store exactly `keys` / `values` [B, H, L', D] (after compaction or eviction) in a fresh,
        right-sized buffer; the old one is freed as soon as the caller drops its own references."""
        if keys is self.keys and values is self.values:
            return
        self._k = self._v = None
        self.length = 0
        self.capacity = 0
        self.update(keys, values)

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self._k = self._v = None
        self.length = 0
        super().reset()


class PositionedLayer(InPlaceLayer):
    """An InPlaceLayer that remembers the original position of every key it stores and can drop keys.

    `get_seq_length` counts every token the layer has *seen*, not the ones it still stores: the
    model derives the next position ids from it, so positions stay original after eviction (no
    renumbering). `get_mask_sizes` reports what is stored, which is what attention will see.
    Stored order is not position order once `keep` has run (it fills holes from the end); new
    tokens are always appended, so the last n stored are this forward's queries.
    """

    def __init__(self, capacity: int = 0, **kwargs) -> None:
        super().__init__(capacity, **kwargs)
        self._pos: torch.Tensor | None = None  # int64 [capacity]
        self.positions: torch.Tensor | None = None  # int64 [L_stored], a view of _pos
        self.seen = 0

    def update(self, key_states, value_states, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        start, n = self.length, key_states.shape[-2]
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        if self._pos is None or self._pos.numel() < self._k.shape[-2]:
            pos = torch.empty(self._k.shape[-2], dtype=torch.long, device=key_states.device)
            if start:
                pos[:start].copy_(self._pos[:start])
            self._pos = pos
        self._pos[start : start + n] = torch.arange(self.seen, self.seen + n, device=key_states.device)
        self.positions = self._pos[: self.length]
        self.seen += n
        return keys, values

    def keep(self, keep_L: torch.Tensor) -> None:
        """Keep only the stored tokens where the boolean `keep_L` is true, moving no more than the
        dropped count: each hole below the new length is filled by a kept token from above it."""
        m = int(keep_L.sum())
        holes = (~keep_L[:m]).nonzero()[:, 0]
        if holes.numel():
            movers = keep_L[m:].nonzero()[:, 0] + m
            for buf in (self._k, self._v):
                buf.index_copy_(2, holes, buf.index_select(2, movers))
            self._pos.index_copy_(0, holes, self._pos.index_select(0, movers))
        self.length = m
        if self._k.shape[-2] > 2 * (m + DECODE_RESERVE):
            # Far fewer tokens left than allocated (a whole prompt's buffer after one-shot
            # prefill): move them to a right-sized buffer so the big one is freed. Later growth
            # follows what is stored, not the prompt-sized hint.
            size = m + DECODE_RESERVE
            self._k = torch.cat([self._k[:, :, :m], self._k.new_empty(*self._k.shape[:2], size - m, self._k.shape[-1])], 2)
            self._v = torch.cat([self._v[:, :, :m], self._v.new_empty(*self._v.shape[:2], size - m, self._v.shape[-1])], 2)
            self._pos = torch.cat([self._pos[:m], self._pos.new_empty(size - m)])
            self.capacity = 0
        self._expose()
        self.positions = self._pos[:m]

    def replace(self, keys, values) -> None:
        raise TypeError("a PositionedLayer drops keys with `keep`, which keeps their positions")

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def reset(self) -> None:
        super().reset()
        self._pos = self.positions = None
        self.seen = 0


def new_cache(
    model: torch.nn.Module, capacity: int = 0, positioned_layers=(), positioned_capacity: int = 0
) -> transformers.Cache:
    """transformers' cache for this model with in-place layers: `InPlaceLayer` for every full
    attention layer (sliding-window layers keep transformers' own), `PositionedLayer` at
    `positioned_layers`. `capacity` (`positioned_capacity`): tokens each (positioned) layer
    preallocates at its first write (the most it will hold in prefill, where known; 0 = what the
    first write needs), plus DECODE_RESERVE."""
    cache = transformers.DynamicCache(config=model.config)
    for i, layer in enumerate(cache.layers):
        if i in positioned_layers:
            cache.layers[i] = PositionedLayer(positioned_capacity)
        elif type(layer) is transformers.cache_utils.DynamicLayer:
            cache.layers[i] = InPlaceLayer(capacity)
    return cache


def new_positioned_cache(
    model: torch.nn.Module, positioned_layers, capacity: int = 0, positioned_capacity: int = 0
) -> transformers.Cache:
    """The model's usual cache with `PositionedLayer`s at the given layer indices."""
    return new_cache(model, capacity, set(positioned_layers), positioned_capacity)


# --------------------------------------------------------------------------------------------
# Helpers for methods that edit or re-rotate the KV cache (snapkv, streamingllm)


def no_mask(*args, **kwargs) -> None:
    """Mask function for attention functions that build their own mask from forward kwargs.

    Registered in place of `sdpa_mask` so transformers does not materialise a [q, k] boolean
    mask per forward that the attention function would ignore anyway.
    """
    return None


def uses_sliding_window(model: torch.nn.Module) -> bool:
    """Whether transformers would give any layer a sliding-window cache (e.g. Mistral v0.1, Qwen2 with
    use_sliding_window): methods that evict or re-rotate cached keys themselves do not compose with it."""
    return any(transformers.DynamicCache(config=model.config).is_sliding)


def rotary_cos_sin(
    model: torch.nn.Module, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own RoPE tables at `position_ids` [B, L]: (cos, sin), each [B, L, head_dim].

    The same module, hence the same values bit for bit, that the decoder layers use, including
    any rope scaling and its attention factor.
    """
    probe = torch.empty(0, dtype=dtype, device=position_ids.device)
    return model.model.rotary_emb(probe, position_ids)


def get_cache_layer(cache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's stored keys and values, [B, Hkv, L, D] each."""
    layer = cache.layers[layer_idx]
    return layer.keys, layer.values


def set_cache_layer(cache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Replace one layer's stored keys and values [B, Hkv, L', D] (after eviction or compaction).

    Only plain growing layers are edited (InPlaceLayer: a fresh right-sized buffer, later updates
    write after it; DynamicLayer: its `update` keeps concatenating onto whatever is stored); a
    sliding, static or positioned layer keeps bookkeeping of its own that a replacement would
    silently break.
    """
    layer = cache.layers[layer_idx]
    if type(layer) is InPlaceLayer:
        layer.replace(keys, values)
        return
    if type(layer) is not transformers.cache_utils.DynamicLayer:
        raise TypeError(f"cannot edit a {type(layer).__name__} in place; only a plain DynamicLayer or InPlaceLayer")
    layer.keys, layer.values = keys, values
